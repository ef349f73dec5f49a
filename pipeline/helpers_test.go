package pipeline

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// fakeAdmitter is an Admitter made of a function.
type fakeAdmitter struct {
	admit func(ctx context.Context, apiKey string) (messages.Decision, error)
}

var _ Admitter = fakeAdmitter{}

func (f fakeAdmitter) Admit(ctx context.Context, apiKey string) (messages.Decision, error) {
	return f.admit(ctx, apiKey)
}

// fakeBackends is a Backends made of functions.
type fakeBackends struct {
	healthy       func() []messages.Backend
	reportFailure func(ctx context.Context, b messages.Backend, err error)
}

var _ Backends = fakeBackends{}

func (f fakeBackends) Healthy() []messages.Backend { return f.healthy() }

func (f fakeBackends) ReportFailure(ctx context.Context, b messages.Backend, err error) {
	f.reportFailure(ctx, b, err)
}

const (
	testKey      = "test-key-0123456789abcdef"
	testClientID = "client-1"
)

// allowed is the decision the default admitter returns for testKey.
var allowed = messages.Decision{
	ClientID:   testClientID,
	Allowed:    true,
	Limit:      20,
	Remaining:  19,
	ResetAfter: 200 * time.Millisecond,
	Window:     4 * time.Second,
}

// admitTestKey admits testKey and knows no other key.
func admitTestKey(_ context.Context, key string) (messages.Decision, error) {
	if key != testKey {
		return messages.Decision{}, messages.ErrUnknownKey
	}
	return allowed, nil
}

// failureLog records ReportFailure calls.
type failureLog struct {
	mu  sync.Mutex
	got []string // backend hosts
}

func (l *failureLog) report(_ context.Context, b messages.Backend, _ error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, b.URL.Host)
}

func (l *failureLog) hosts() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

// harness serves a Pipeline on a real listener on 127.0.0.1.
type harness struct {
	p        *Pipeline
	url      string
	client   *http.Client
	failures *failureLog
	admits   atomic.Int64
}

// setup is what a test changes from the defaults of newHarness.
type setup struct {
	backends []string // URLs, in Healthy order
	admit    func(ctx context.Context, key string) (messages.Decision, error)
	opts     Options // Admitter and Backends are filled in
	// wrap, when set, wraps the pipeline's handler on the test server.
	wrap func(http.Handler) http.Handler
}

func newHarness(t *testing.T, s setup) *harness {
	t.Helper()
	h := &harness{failures: &failureLog{}}
	bs := backendList(t, s.backends...)
	admit := s.admit
	if admit == nil {
		admit = admitTestKey
	}
	opts := s.opts
	opts.Admitter = fakeAdmitter{admit: func(ctx context.Context, key string) (messages.Decision, error) {
		h.admits.Add(1)
		return admit(ctx, key)
	}}
	opts.Backends = fakeBackends{
		healthy:       func() []messages.Backend { return bs },
		reportFailure: h.failures.report,
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.MaxRetryBodyBytes == 0 {
		opts.MaxRetryBodyBytes = 1 << 20
	}
	if opts.MaxRetryBufferBytes == 0 {
		opts.MaxRetryBufferBytes = 64 << 20
	}
	h.p = New(opts)
	var handler http.Handler = h.p
	if s.wrap != nil {
		handler = s.wrap(h.p)
	}
	srv := httptest.NewServer(handler)
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	h.client = &http.Client{Transport: tr}
	h.url = srv.URL
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		h.p.CloseIdleConnections()
	})
	return h
}

// backendList numbers the URLs as a registry would.
func backendList(t testing.TB, urls ...string) []messages.Backend {
	t.Helper()
	bs := make([]messages.Backend, len(urls))
	for i, raw := range urls {
		u, err := url.Parse(raw)
		require.NoError(t, err)
		bs[i] = messages.Backend{ID: i, URL: u}
	}
	return bs
}

// request is one client request through the harness.
type request struct {
	method string
	path   string
	body   io.Reader
	header http.Header // added to the request; Authorization defaults to testKey
	ctx    context.Context
}

// do sends r and returns the response with its body read.
func (h *harness) do(t *testing.T, r request) (*http.Response, string) {
	t.Helper()
	res := h.send(t, r)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, string(b)
}

// send sends r; the caller reads and closes the body.
func (h *harness) send(t *testing.T, r request) *http.Response {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	if r.path == "" {
		r.path = "/"
	}
	if r.ctx == nil {
		r.ctx = t.Context()
	}
	req, err := http.NewRequestWithContext(r.ctx, r.method, h.url+r.path, r.body)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testKey)
	for k, vs := range r.header {
		req.Header[k] = vs
	}
	res, err := h.client.Do(req)
	require.NoError(t, err)
	return res
}

// backend is a test upstream that counts its requests.
type backend struct {
	*httptest.Server
	hits atomic.Int64
}

// newBackend starts a backend on 127.0.0.1 running h.
func newBackend(t *testing.T, h http.HandlerFunc) *backend {
	t.Helper()
	b := &backend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(b.Close)
	return b
}

// answering returns a handler that drains the body and answers status with
// body text.
func answering(status int, text string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, text)
	}
}

// hashing answers 200 (or status) with the sha256 of the request body.
func hashing(status int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.New()
		_, _ = io.Copy(sum, r.Body)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, hex.EncodeToString(sum.Sum(nil)))
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// deadURL is the URL of a port that refuses connections: a listener
// opened and closed again.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return "http://" + addr
}

// assertJSONError checks an error body of this port.
func assertJSONError(t *testing.T, res *http.Response, body string, code int, message string) {
	t.Helper()
	assert.Equal(t, code, res.StatusCode)
	assert.Equal(t, "application/json", res.Header.Get("Content-Type"))
	var got struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &got), body)
	assert.Equal(t, code, got.Code)
	assert.Equal(t, message, got.Message)
}

// logBuffer collects JSON log lines; safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// lines decodes the log lines.
func (l *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(l.String()) {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		out = append(out, m)
	}
	return out
}

func newLogger(l *logBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor waits for ch or fails the test after a generous deadline.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}
