package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/httpapi/openapitest"
)

// The helpers below drive a running instance the way its users do: over
// HTTP on loopback. Helpers that may run off the test goroutine return
// errors instead of failing the test.

// newHTTPClient returns a client, checking admin traffic against the
// OpenAPI description (openapitest), whose pool keeps enough idle connections
// for concurrent tests (the default of 2 per host would open and drop a
// connection per request) and closes them when the test ends, so no
// connection goroutine is left for goleak. Its timeout only keeps a hung
// request from hanging the test.
func newHTTPClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 512,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: openapitest.Transport(t, tr), Timeout: 30 * time.Second}
}

// checkedClient is http.DefaultClient with every admin request and answer
// checked against the OpenAPI description.
func checkedClient(t *testing.T) *http.Client {
	t.Helper()
	return &http.Client{Transport: openapitest.Transport(t, nil)}
}

// admin returns an instance whose addr is in's admin port, for the admin
// helpers. start may return before the admin server's "listening" line is
// logged, so this waits for it.
func (in *instance) admin(t *testing.T) *instance {
	t.Helper()
	var addr string
	eventually(t, func() bool {
		for _, l := range in.logs.lines("listening") {
			if l["server"] == "admin" {
				addr, _ = l["addr"].(string)
			}
		}
		return addr != ""
	}, "admin server listening")
	return &instance{addr: addr, adminAddr: addr, logs: in.logs, stop: in.stop}
}

// apiClient is a client as the admin API shows it.
type apiClient struct {
	ClientID   string  `json:"client_id"`
	APIKey     string  `json:"api_key"`
	RatePerSec float64 `json:"rate_per_sec"`
	Capacity   int64   `json:"capacity"`
	Tokens     float64 `json:"tokens"`
	LastRefill string  `json:"last_refill"`
}

// backendStatus is one entry of GET /backends.
type backendStatus struct {
	URL       string `json:"url"`
	Healthy   bool   `json:"healthy"`
	LastError string `json:"last_error"`
}

// adminJSON sends an admin request to the main port (admin_port is 0) and
// decodes a JSON answer of status want into out.
func (in *instance) adminJSON(t *testing.T, hc *http.Client, method, path string, body any, want int, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://"+in.addr+path, rd)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, want, resp.StatusCode, "%s %s: %s", method, path, data)
	if out != nil {
		require.NoError(t, json.Unmarshal(data, out), "%s", data)
	}
}

// createClient creates a client through POST /clients.
func (in *instance) createClient(t *testing.T, hc *http.Client, id string, rate float64, capacity int64) apiClient {
	t.Helper()
	var c apiClient
	in.adminJSON(t, hc, http.MethodPost, "/clients",
		map[string]any{"client_id": id, "rate_per_sec": rate, "capacity": capacity}, http.StatusCreated, &c)
	require.NotEmpty(t, c.APIKey)
	return c
}

// getClient reads a client, tokens as of now, through GET /clients/{id}.
func (in *instance) getClient(t *testing.T, hc *http.Client, id string) apiClient {
	t.Helper()
	var c apiClient
	in.adminJSON(t, hc, http.MethodGet, "/clients/"+id, nil, http.StatusOK, &c)
	return c
}

// backendsByURL reads GET /backends.
func (in *instance) backendsByURL(t *testing.T, hc *http.Client) map[string]backendStatus {
	t.Helper()
	var out struct {
		Backends []backendStatus `json:"backends"`
	}
	in.adminJSON(t, hc, http.MethodGet, "/backends", nil, http.StatusOK, &out)
	m := make(map[string]backendStatus, len(out.Backends))
	for _, b := range out.Backends {
		m[b.URL] = b
	}
	return m
}

// reply is a forwarded request's answer, body read.
type reply struct {
	status int
	header http.Header
	body   string
}

// forward sends a GET through the pipeline with key. It is safe to call
// from any goroutine.
func (in *instance) forward(hc *http.Client, key, path string, header http.Header) (reply, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+in.addr+path, nil)
	if err != nil {
		return reply{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: string(data)}, err
}

// mustForward is forward on the test goroutine.
func (in *instance) mustForward(t *testing.T, hc *http.Client, key, path string, header http.Header) reply {
	t.Helper()
	r, err := in.forward(hc, key, path, header)
	require.NoError(t, err)
	return r
}

// liveBackend is a backend on a fixed loopback address that a test can
// kill (listener and every connection closed at once, like a crashed
// process) and bring back on the same address. It answers GET /health
// with 200 and counts every other request.
type liveBackend struct {
	t       *testing.T
	addr    string
	url     string
	handler http.Handler // answers counted requests; nil for a short text
	hits    atomic.Int64

	mu     sync.Mutex
	srv    *http.Server
	served chan struct{} // closed when the current Serve returns
}

// newLiveBackend starts a backend on a fresh loopback port. It is killed
// when the test ends.
func newLiveBackend(t *testing.T) *liveBackend {
	t.Helper()
	return newLiveBackendWith(t, nil)
}

// newLiveBackendWith is newLiveBackend with h answering the requests it
// counts.
func newLiveBackendWith(t *testing.T, h http.Handler) *liveBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &liveBackend{t: t, addr: ln.Addr().String(), handler: h}
	b.url = "http://" + b.addr
	b.serve(ln)
	t.Cleanup(b.kill)
	return b
}

// newDownBackend returns a backend whose address nothing listens on yet.
func newDownBackend(t *testing.T) *liveBackend {
	t.Helper()
	b := newLiveBackend(t)
	b.kill()
	return b
}

func (b *liveBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		w.WriteHeader(http.StatusOK)
		return
	}
	b.hits.Add(1)
	if b.handler != nil {
		b.handler.ServeHTTP(w, r)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "ok from "+b.addr)
}

func (b *liveBackend) serve(ln net.Listener) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.srv = &http.Server{Handler: b, ReadHeaderTimeout: 5 * time.Second}
	b.served = make(chan struct{})
	srv, served := b.srv, b.served
	go func() { // kill waits for it
		defer close(served)
		_ = srv.Serve(ln)
	}()
}

// up brings a killed backend back on its address.
func (b *liveBackend) up() {
	b.t.Helper()
	ln, err := net.Listen("tcp", b.addr)
	require.NoError(b.t, err, "listen again on %s", b.addr)
	b.serve(ln)
}

// kill closes the listener and every connection, and waits for Serve to
// return. Killing a dead backend does nothing.
func (b *liveBackend) kill() {
	b.mu.Lock()
	srv, served := b.srv, b.served
	b.srv = nil
	b.mu.Unlock()
	if srv == nil {
		return
	}
	if err := srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		b.t.Logf("close backend %s: %v", b.addr, err)
	}
	<-served
}

// jsonError decodes a JSON error body of the main port.
func jsonError(t *testing.T, r reply) (code int, message string) {
	t.Helper()
	require.Equal(t, "application/json", r.header.Get("Content-Type"))
	var e struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &e), "%s", r.body)
	return e.Code, e.Message
}

// waitFor bounds every condition these tests poll.
const waitFor = 10 * time.Second

// eventually polls cond until it holds and fails the test if it does not
// within waitFor. Unlike require.Eventually, cond runs on the test
// goroutine, so it may use require and share variables freely.
func eventually(t *testing.T, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			require.FailNow(t, "condition not met within "+waitFor.String(), msgAndArgs...)
		}
		<-tick.C
	}
}

// hugeLimits is a rate and capacity no test exhausts.
const (
	hugeRate     = 1e6
	hugeCapacity = 1e9
)

// setLB sets load_balancer fields of a baseConfig.
func setLB(cfg map[string]any, kv map[string]any) {
	lb := cfg["load_balancer"].(map[string]any)
	for k, v := range kv {
		lb[k] = v
	}
}

// setRL sets rate_limiter fields of a baseConfig.
func setRL(cfg map[string]any, kv map[string]any) {
	rl := cfg["rate_limiter"].(map[string]any)
	for k, v := range kv {
		rl[k] = v
	}
}

// urls returns the backends' URLs.
func urls(bs ...*liveBackend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.url
	}
	return out
}

// firstLine is s up to its first newline, for short failure messages.
func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
