package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// End-to-end regressions of issue 12 against the whole program: what a key
// holder or a web page can do to the forwarding path and the admin API.

// TestHostileStalledUpload: a key holder declares a body too large to
// buffer, sends 5 KB and stops. It gets a 408 JSON within a few
// request_timeouts, its connection is closed, and the goroutines it pinned
// are released.
func TestHostileStalledUpload(t *testing.T) {
	rec := newRecorder(t)
	cfg := baseConfig(t, rec.url)
	setLB(cfg, map[string]any{"request_timeout": 0.5})
	in := start(t, cfg)
	key := createKey(t, in.addr, "", "uploader")
	_, _ = rawExchange(t, in.addr, crlf("GET /warm HTTP/1.1\nHost: a\nAuthorization: Bearer "+key+"\n\n"), 1, 0)
	baseline := runtime.NumGoroutine()

	conn, err := net.DialTimeout("tcp", in.addr, 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	began := time.Now()
	_, err = fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\n"+
		"Content-Length: 4194304\r\n\r\n%s", key, strings.Repeat("u", 5000))
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err, "answered at all")
	body, _ := io.ReadAll(res.Body)
	assert.Equal(t, http.StatusRequestTimeout, res.StatusCode, string(body))
	assert.Equal(t, http.StatusRequestTimeout, jsonCode(string(body)))
	assert.Less(t, time.Since(began), 10*time.Second, "a few request_timeouts, loosely")
	_, err = br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "connection closed")
	conn.Close()

	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline {
		require.True(t, time.Now().Before(deadline), "%d goroutines, %d before", runtime.NumGoroutine(), baseline)
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
}

// TestHostileEventStreamOutlivesRequestTimeout: an event stream three
// times as long as request_timeout, with events more often than it, gets
// through whole.
func TestHostileEventStreamOutlivesRequestTimeout(t *testing.T) {
	const events = 12 // one every quarter request_timeout, 3 × request_timeout in all
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range events {
			_, _ = fmt.Fprintf(w, "data: %d\n\n", i)
			_ = http.NewResponseController(w).Flush()
			select {
			case <-time.After(250 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	}))
	t.Cleanup(b.Close)
	cfg := baseConfig(t, b.URL)
	setLB(cfg, map[string]any{"request_timeout": 1})
	in := start(t, cfg)
	key := createKey(t, in.addr, "", "listener")
	answers, _ := rawExchange(t, in.addr, crlf("GET /events HTTP/1.1\nHost: a\nAuthorization: Bearer "+key+"\n\n"), 1, 0)
	require.Len(t, answers, 1)
	assert.Equal(t, http.StatusOK, answers[0].status)
	assert.Equal(t, events, strings.Count(answers[0].body, "data: "), answers[0].body)
}

// TestHostileIdentitySmuggling: trailers and '_' spellings of Tollgate's
// headers never reach a backend; CONNECT and foreign upgrades are refused.
func TestHostileIdentitySmuggling(t *testing.T) {
	type seen struct{ header, trailer http.Header }
	got := make(chan seen, 4)
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		got <- seen{r.Header.Clone(), r.Trailer.Clone()}
	}))
	t.Cleanup(b.Close)
	cfg := baseConfig(t, b.URL)
	setLB(cfg, map[string]any{"max_retry_body_bytes": 1024})
	in := start(t, cfg)
	key := createKey(t, in.addr, "", "smuggler")

	chunk := strings.Repeat("c", 2000) // over max_retry_body_bytes: streamed
	raw := crlf("POST /up HTTP/1.1\nHost: a\nAuthorization: Bearer "+key+
		"\nX_Client_Id: admin\nX_Forwarded_For: 6.6.6.6\nX-Forwarded-Port: 1\nTrailer: X-Client-Id, Authorization, X-Forwarded-For, X-Sum\n"+
		"Transfer-Encoding: chunked\n\n") + fmt.Sprintf("%x\r\n%s\r\n", len(chunk), chunk) +
		crlf("0\nX-Client-Id: admin\nAuthorization: Bearer x\nX-Forwarded-For: 10.0.0.1\nX-Sum: 42\n\n")
	answers, _ := rawExchange(t, in.addr, raw, 1, 0)
	require.Len(t, answers, 1)
	require.Equal(t, http.StatusOK, answers[0].status, answers[0].body)
	s := <-got
	assert.Equal(t, []string{"smuggler"}, s.header.Values("X-Client-Id"))
	for _, k := range []string{"X_Client_Id", "X_Forwarded_For", "X-Forwarded-Port"} {
		assert.Empty(t, s.header[k], k)
	}
	assert.Equal(t, []string{"127.0.0.1"}, s.header.Values("X-Forwarded-For"))
	for _, k := range []string{"X-Client-Id", "Authorization", "X-Forwarded-For"} {
		assert.Empty(t, s.trailer.Values(k), "trailer "+k)
	}
	assert.Equal(t, "42", s.trailer.Get("X-Sum"))

	for _, tc := range []struct {
		raw    string
		status int
	}{
		{"CONNECT 127.0.0.1:22 HTTP/1.1\nHost: 127.0.0.1:22\nAuthorization: Bearer " + key + "\n\n", 405},
		{"GET / HTTP/1.1\nHost: a\nAuthorization: Bearer " + key + "\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAAQAAP__\n\n", 400},
	} {
		answers, _ := rawExchange(t, in.addr, crlf(tc.raw), 1, 0)
		require.Len(t, answers, 1)
		assert.Equal(t, tc.status, answers[0].status)
		assert.Equal(t, tc.status, jsonCode(answers[0].body))
	}
	assert.Empty(t, got, "nothing else reached the backend")
}

// TestHostileAdminFromABrowser: without an admin key, a page the operator
// opens can neither read clients through DNS rebinding nor write them
// cross-site (SPEC 4).
func TestHostileAdminFromABrowser(t *testing.T) {
	rec := newRecorder(t)
	in := start(t, baseConfig(t, rec.url))
	base := "http://" + in.addr
	send := func(method, path, host, origin, ct, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		require.NoError(t, err)
		if host != "" {
			req.Host = host
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, body := send(http.MethodGet, "/clients", "rebound.attacker.example:"+portOf(in.addr), "", "", "")
	assert.Equal(t, http.StatusForbidden, code, body)
	assert.Equal(t, http.StatusForbidden, jsonCode(body))
	code, _ = send(http.MethodPost, "/clients", "", "https://attacker.example", "application/json", `{"client_id":"csrf"}`)
	assert.Equal(t, http.StatusForbidden, code)
	code, _ = send(http.MethodPost, "/clients", "", "", "", `{"client_id":"blob"}`)
	assert.Equal(t, http.StatusUnsupportedMediaType, code, "a Blob carries no Content-Type")
	code, _ = send(http.MethodPost, "/clients", "localhost:"+portOf(in.addr), "http://localhost:"+portOf(in.addr),
		"application/json", `{"client_id":"mine"}`)
	assert.Equal(t, http.StatusCreated, code)
	code, _ = send(http.MethodPost, "/clients/mine/rotate-key", "", "", "", "")
	assert.Equal(t, http.StatusOK, code, "no body, no Content-Type needed")
	code, _ = send(http.MethodDelete, "/clients/mine", "", "", "", "")
	assert.Equal(t, http.StatusNoContent, code)
	code, body = send(http.MethodGet, "/clients", "", "", "", "")
	assert.Equal(t, http.StatusOK, code)
	assert.NotContains(t, body, "csrf")
	assert.NotContains(t, body, "blob")
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}
