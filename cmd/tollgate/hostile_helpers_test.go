package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The helpers of the hostile-input and admin-exposure tests. They talk to
// a running instance over loopback, raw TCP where net/http's client would
// refuse to send the bytes under test.

// seenRequest is what a recording backend saw of one request.
type seenRequest struct {
	method, path     string
	header           http.Header
	contentLength    int64
	transferEncoding []string
	body             string
}

// recorder is a backend that answers 200 "ok" and records every request
// but its health probes.
type recorder struct {
	url  string
	mu   sync.Mutex
	reqs []seenRequest
}

func newRecorder(t *testing.T) *recorder {
	t.Helper()
	rec := &recorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if r.URL.Path == "/health" {
			return
		}
		if err != nil {
			body = append(body, "<read error: "+err.Error()+">"...)
		}
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, seenRequest{
			method: r.Method, path: r.URL.Path, header: r.Header.Clone(),
			contentLength: r.ContentLength, transferEncoding: r.TransferEncoding, body: string(body),
		})
		rec.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	rec.url = srv.URL
	return rec
}

// seen returns a copy of the requests recorded so far.
func (r *recorder) seen() []seenRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenRequest(nil), r.reqs...)
}

// paths returns the paths of the requests recorded so far.
func (r *recorder) paths() []string {
	var out []string
	for _, s := range r.seen() {
		out = append(out, s.path)
	}
	return out
}

// createKey creates a client with a large bucket through the admin API on
// addr and returns its key.
func createKey(t *testing.T, addr, adminKey, id string) string {
	t.Helper()
	code, body := call(t, http.MethodPost, "http://"+addr+"/clients", adminKey,
		`{"client_id":"`+id+`","rate_per_sec":1000,"capacity":100000}`)
	require.Equal(t, http.StatusCreated, code, body)
	var c struct {
		APIKey string `json:"api_key"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &c))
	require.NotEmpty(t, c.APIKey)
	return c.APIKey
}

// rawResponse is one answer read off a raw connection.
type rawResponse struct {
	status int
	header http.Header
	body   string
}

// afterAnswers is what a connection did after the answers were read.
type afterAnswers int

const (
	notChecked afterAnswers = iota
	stayedOpen              // nothing arrived within the wait
	closedByServer
	moreBytes // another answer (or garbage) followed
)

// rawExchange writes raw on a new connection to addr and reads want
// answers, fewer if the server closes the connection or nothing arrives
// within 5 s. With wait > 0 it then watches the connection for that long.
func rawExchange(t *testing.T, addr, raw string, want int, wait time.Duration) ([]rawResponse, afterAnswers) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, raw)
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	var answers []rawResponse
	for len(answers) < want {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if isClosed(err) {
				return answers, closedByServer
			}
			return answers, stayedOpen
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		answers = append(answers, rawResponse{status: resp.StatusCode, header: resp.Header, body: string(body)})
	}
	if wait <= 0 {
		return answers, notChecked
	}
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(wait)))
	switch _, err = br.ReadByte(); {
	case err == nil:
		return answers, moreBytes
	case isClosed(err):
		return answers, closedByServer
	}
	return answers, stayedOpen
}

// isClosed reports whether a read error means the peer closed the
// connection, as opposed to the read deadline passing.
func isClosed(err error) bool {
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// jsonCode decodes an error body {"code", "message"} and returns its code,
// or 0 when the body is not such JSON.
func jsonCode(body string) int {
	var e struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal([]byte(body), &e) != nil || e.Message == "" {
		return 0
	}
	return e.Code
}

// crlf turns a readable request written with \n line ends into the wire
// form with \r\n.
func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

// jsonMessage returns the message of an error body, or "".
func jsonMessage(body string) string {
	var e struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal([]byte(body), &e)
	return e.Message
}

// jsonString returns the string field name of a JSON object body.
func jsonString(t *testing.T, body, name string) string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &m), body)
	s, _ := m[name].(string)
	return s
}
