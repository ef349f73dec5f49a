package pipeline

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

func TestRoundRobinIsEven(t *testing.T) {
	bs := []*backend{
		newBackend(t, answering(http.StatusOK, "a")),
		newBackend(t, answering(http.StatusOK, "b")),
		newBackend(t, answering(http.StatusOK, "c")),
	}
	h := newHarness(t, setup{backends: []string{bs[0].URL, bs[1].URL, bs[2].URL}})
	for range 300 {
		res, _ := h.do(t, request{})
		require.Equal(t, http.StatusOK, res.StatusCode)
	}
	for _, b := range bs {
		assert.InDelta(t, 100, b.hits.Load(), 1)
	}
}

func TestAuthentication(t *testing.T) {
	tests := []struct {
		name       string
		auth       []string // Authorization values; nil sends none
		status     int
		message    string
		challenge  string
		askedStore bool
	}{
		{name: "missing", status: 401, message: "missing api key", challenge: "Bearer"},
		{name: "empty", auth: []string{""}, status: 401, message: "missing api key", challenge: "Bearer"},
		{name: "unknown key", auth: []string{"Bearer nope-nope-nope-nope"}, status: 401, message: "invalid api key",
			challenge: `Bearer error="invalid_token"`, askedStore: true},
		{name: "bearer without key", auth: []string{"Bearer"}, status: 401, message: "invalid api key", challenge: `Bearer error="invalid_token"`},
		{name: "control char", auth: []string{"Bearer abc\x01def"}, status: 401, message: "invalid api key", challenge: `Bearer error="invalid_token"`},
		{name: "non-ASCII", auth: []string{"Bearer clé-clé-clé"}, status: 401, message: "invalid api key", challenge: `Bearer error="invalid_token"`},
		{name: "huge", auth: []string{strings.Repeat("k", 4096)}, status: 401, message: "invalid api key", challenge: `Bearer error="invalid_token"`},
		{name: "two headers", auth: []string{testKey, testKey}, status: 401, message: "invalid api key", challenge: `Bearer error="invalid_token"`},
		{name: "bare key", auth: []string{testKey}, status: 200, askedStore: true},
		{name: "bearer key", auth: []string{"bearer " + testKey}, status: 200, askedStore: true},
	}
	b := newBackend(t, answering(http.StatusOK, "ok"))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, setup{backends: []string{b.URL}})
			// Through ServeHTTP directly: http.Client refuses to send
			// control characters, and the pipeline must refuse them too.
			req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/x", nil)
			req.Header["Authorization"] = tt.auth
			rec := httptest.NewRecorder()
			h.p.ServeHTTP(rec, req)
			res := rec.Result()
			defer res.Body.Close()
			if tt.status == 200 {
				assert.Equal(t, 200, res.StatusCode)
			} else {
				assertJSONError(t, res, rec.Body.String(), tt.status, tt.message)
				assert.Equal(t, tt.challenge, res.Header.Get("WWW-Authenticate"))
				assert.Empty(t, res.Header.Get("X-RateLimit-Limit"))
			}
			assert.NotEmpty(t, res.Header.Get("X-Request-Id"))
			assert.Equal(t, tt.askedStore, h.admits.Load() > 0)
		})
	}
}

func TestRateLimitHeaders(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		// A backend's own rate-limit headers must not reach the client.
		w.Header().Set("X-RateLimit-Limit", "999")
		w.Header().Set("RateLimit", "backend")
		_, _ = io.WriteString(w, "ok")
	})
	refused := messages.Decision{ClientID: testClientID, Limit: 20, RetryAfter: 1200 * time.Millisecond,
		ResetAfter: 4 * time.Second, Window: 4 * time.Second}
	admitted := true
	var mu sync.Mutex
	h := newHarness(t, setup{
		backends: []string{b.URL},
		admit: func(_ context.Context, _ string) (messages.Decision, error) {
			mu.Lock()
			defer mu.Unlock()
			if admitted {
				return allowed, nil
			}
			return refused, nil
		},
	})

	res, body := h.do(t, request{})
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "ok", body)
	assert.Equal(t, []string{"20"}, res.Header.Values("X-RateLimit-Limit"))
	assert.Equal(t, []string{"19"}, res.Header.Values("X-RateLimit-Remaining"))
	assert.Equal(t, []string{`"default";q=20;w=4`}, res.Header.Values("RateLimit-Policy"))
	assert.Equal(t, []string{`"default";r=19;t=1`}, res.Header.Values("RateLimit"))
	assert.Empty(t, res.Header.Get("Retry-After"))

	mu.Lock()
	admitted = false
	mu.Unlock()
	res, body = h.do(t, request{})
	assertJSONError(t, res, body, http.StatusTooManyRequests, "rate limit exceeded")
	assert.Equal(t, "2", res.Header.Get("Retry-After"))
	assert.Equal(t, "20", res.Header.Get("X-RateLimit-Limit"))
	assert.Equal(t, "0", res.Header.Get("X-RateLimit-Remaining"))
	assert.Equal(t, `"default";q=20;w=4`, res.Header.Get("RateLimit-Policy"))
	assert.Equal(t, `"default";r=0;t=4`, res.Header.Get("RateLimit"))
	assert.EqualValues(t, 1, b.hits.Load(), "a refused request reaches no backend")
}

func TestErrorsAfterAdmissionKeepRateLimitHeaders(t *testing.T) {
	h := newHarness(t, setup{backends: []string{deadURL(t)}})
	res, body := h.do(t, request{})
	assertJSONError(t, res, body, http.StatusBadGateway, "bad gateway")
	assert.Equal(t, "20", res.Header.Get("X-RateLimit-Limit"))
	assert.Equal(t, `"default";r=19;t=1`, res.Header.Get("RateLimit"))
	assert.NotEmpty(t, res.Header.Get("X-Request-Id"))
}

func TestAdmissionAndBackendErrors(t *testing.T) {
	b := newBackend(t, answering(http.StatusOK, "ok"))
	fail := func(err error) func(context.Context, string) (messages.Decision, error) {
		return func(context.Context, string) (messages.Decision, error) { return messages.Decision{}, err }
	}
	tests := []struct {
		name     string
		backends []string
		admit    func(context.Context, string) (messages.Decision, error)
		status   int
		message  string
	}{
		{name: "no healthy backend", status: 503, message: "no healthy backend"},
		{name: "store unavailable", backends: []string{b.URL}, admit: fail(messages.ErrUnavailable),
			status: 503, message: "store unavailable"},
		{name: "limiter stopped", backends: []string{b.URL}, admit: fail(messages.ErrStopped),
			status: 503, message: "service unavailable"},
		{name: "unknown key", backends: []string{b.URL}, admit: fail(messages.ErrUnknownKey),
			status: 401, message: "invalid api key"},
		{name: "unexpected error", backends: []string{b.URL}, admit: fail(errors.New("boom")),
			status: 500, message: "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, setup{backends: tt.backends, admit: tt.admit})
			res, body := h.do(t, request{})
			assertJSONError(t, res, body, tt.status, tt.message)
			if tt.admit == nil { // admitted, then no backend
				assert.Equal(t, "20", res.Header.Get("X-RateLimit-Limit"))
			}
		})
	}
	assert.Zero(t, b.hits.Load())
}

func TestForwardedHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		got <- h
		w.Header().Set("Connection", "X-Backend-Hop")
		w.Header().Set("X-Backend-Hop", "1")
		w.Header().Set("X-Request-Id", "backend-made-this-up")
	})
	h := newHarness(t, setup{backends: []string{b.URL}})
	res, _ := h.do(t, request{header: http.Header{
		"Connection":          {"keep-alive, X-Hop"},
		"X-Hop":               {"1"},
		"Keep-Alive":          {"timeout=5"},
		"Te":                  {"gzip"},
		"Upgrade":             {"websocket"},
		"Proxy-Connection":    {"keep-alive"},
		"X-Forwarded-For":     {"6.6.6.6"},
		"X-Client-Id":         {"spoofed"},
		"X-Request-Id":        {"bad id!"},
		"X-Custom":            {"kept"},
		"Idempotency-Key":     {"k1"},
		"Proxy-Authorization": {"Basic eDp5"},
		"X-Forwarded-Proto":   {"gopher"},
	}})
	require.Equal(t, http.StatusOK, res.StatusCode)
	seen := <-got

	for _, k := range []string{"Authorization", "X-Hop", "Keep-Alive", "Te", "Upgrade", "Proxy-Connection", "Proxy-Authorization"} {
		assert.Empty(t, seen.Values(k), k)
	}
	assert.Equal(t, b.Listener.Addr().String(), seen.Get("Host"))
	assert.Equal(t, []string{testClientID}, seen.Values("X-Client-Id"))
	assert.Equal(t, []string{"127.0.0.1"}, seen.Values("X-Forwarded-For"), "client-sent values are dropped")
	assert.Equal(t, "http", seen.Get("X-Forwarded-Proto"))
	assert.Equal(t, strings.TrimPrefix(h.url, "http://"), seen.Get("X-Forwarded-Host"))
	assert.Equal(t, "kept", seen.Get("X-Custom"))
	assert.Equal(t, "k1", seen.Get("Idempotency-Key"))

	id := seen.Get("X-Request-Id")
	assert.True(t, saneRequestID(id), "an insane incoming ID is replaced: %q", id)
	assert.Equal(t, []string{id}, res.Header.Values("X-Request-Id"), "the client gets the ID the backend got")
	assert.Empty(t, res.Header.Get("X-Backend-Hop"), "response hop-by-hop headers are removed")
}

func TestRequestIDIsKept(t *testing.T) {
	got := make(chan string, 1)
	b := newBackend(t, func(_ http.ResponseWriter, r *http.Request) { got <- r.Header.Get("X-Request-Id") })
	h := newHarness(t, setup{backends: []string{b.URL}})
	res, _ := h.do(t, request{header: http.Header{"X-Request-Id": {"req-42.a:b_c"}}})
	assert.Equal(t, "req-42.a:b_c", <-got)
	assert.Equal(t, "req-42.a:b_c", res.Header.Get("X-Request-Id"))
}

func TestResponsesStream(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first;")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "second")
	})
	h := newHarness(t, setup{backends: []string{b.URL}})
	res := h.send(t, request{})
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)

	first := make([]byte, len("first;"))
	_, err := io.ReadFull(res.Body, first) // the backend is still blocked here
	require.NoError(t, err)
	assert.Equal(t, "first;", string(first))
	close(release)
	rest, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	assert.Equal(t, "second", string(rest))
}

func TestClientCancelReachesBackendAndIsNoFailure(t *testing.T) {
	started := make(chan struct{})
	backendSawCancel := make(chan struct{})
	b := newBackend(t, func(_ http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(backendSawCancel)
	})
	other := newBackend(t, answering(http.StatusOK, "other"))
	served := make(chan struct{})
	logs := &logBuffer{}
	h := newHarness(t, setup{
		backends: []string{b.URL, other.URL},
		opts:     Options{MaxRetries: 3, Logger: newLogger(logs)},
		wrap: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer close(served)
				next.ServeHTTP(w, r)
			})
		},
	})

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { // waited for below
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
		if err == nil {
			req.Header.Set("Authorization", testKey)
			var res *http.Response
			if res, err = h.client.Do(req); err == nil {
				res.Body.Close()
			}
		}
		errc <- err
	}()
	waitFor(t, started, "the backend to get the request")
	cancel()
	waitFor(t, backendSawCancel, "the backend's context to end")
	waitFor(t, served, "the pipeline to finish the request")
	require.ErrorIs(t, <-errc, context.Canceled)

	assert.Empty(t, h.failures.hosts(), "a client cancellation is no backend failure")
	assert.Zero(t, other.hits.Load(), "a client cancellation is not retried")
	var access map[string]any
	for _, l := range logs.lines(t) {
		assert.NotEqual(t, "WARN", l["level"], "no warning for a client cancellation: %v", l)
		if l["msg"] == "client closed request" {
			access = l
		}
	}
	require.NotNil(t, access)
	assert.Equal(t, "DEBUG", access["level"])
	assert.EqualValues(t, statusClientClosed, access["status"])
}

func TestConcurrentRequests(t *testing.T) {
	bs := []*backend{
		newBackend(t, answering(http.StatusOK, "a")),
		newBackend(t, answering(http.StatusOK, "b")),
		newBackend(t, answering(http.StatusOK, "c")),
	}
	h := newHarness(t, setup{backends: []string{bs[0].URL, bs[1].URL, bs[2].URL}})
	const clients, each = 200, 5
	var wg sync.WaitGroup
	errs := make(chan error, clients*each)
	for i := range clients {
		wg.Go(func() {
			for range each {
				req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, h.url+"/c", nil)
				if err != nil {
					errs <- err
					return
				}
				req.Header.Set("Authorization", "Bearer "+testKey)
				res, err := h.client.Do(req)
				if err != nil {
					errs <- err
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					errs <- errors.New(res.Status)
				}
			}
			if i%50 == 0 { // settings change live under load
				h.p.SetLimits(i%3, time.Duration(i+1)*time.Second)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var total int64
	for _, b := range bs {
		total += b.hits.Load()
	}
	assert.EqualValues(t, clients*each, total)
}

func TestLogLinesCarryRequestIDAndNeverTheKey(t *testing.T) {
	bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
	good := newBackend(t, answering(http.StatusOK, "ok"))
	logs := &logBuffer{}
	h := newHarness(t, setup{
		backends: []string{bad.URL, good.URL},
		opts:     Options{MaxRetries: 1, Logger: newLogger(logs), AccessLog: true},
	})
	res, _ := h.do(t, request{path: "/p", header: http.Header{"X-Request-Id": {"trace-1"}}})
	require.Equal(t, http.StatusOK, res.StatusCode)
	h.p.CloseIdleConnections()

	assert.NotContains(t, logs.String(), testKey)
	lines := logs.lines(t)
	require.Len(t, lines, 2, logs.String())
	retry, access := lines[0], lines[1]
	assert.Equal(t, "WARN", retry["level"])
	assert.Equal(t, "retrying request", retry["msg"])
	assert.Equal(t, "trace-1", retry["request_id"])
	assert.EqualValues(t, 503, retry["status"])
	assert.Equal(t, strings.TrimPrefix(bad.URL, "http://"), retry["backend"])
	assert.Equal(t, strings.TrimPrefix(good.URL, "http://"), retry["next_backend"])

	assert.Equal(t, "INFO", access["level"])
	assert.Equal(t, "request", access["msg"])
	assert.Equal(t, "trace-1", access["request_id"])
	assert.Equal(t, testClientID, access["client_id"])
	assert.Equal(t, "GET", access["method"])
	assert.Equal(t, "/p", access["path"])
	assert.EqualValues(t, 200, access["status"])
	assert.Equal(t, strings.TrimPrefix(good.URL, "http://"), access["backend"])
	assert.EqualValues(t, 2, access["attempts"])
	assert.Contains(t, access, "duration")
	assert.EqualValues(t, 2, access["bytes"], `the body "ok"`)
}

func TestFailedRequestLogsWarning(t *testing.T) {
	logs := &logBuffer{}
	dead := deadURL(t)
	h := newHarness(t, setup{backends: []string{dead}, opts: Options{Logger: newLogger(logs)}})
	res, _ := h.do(t, request{})
	require.Equal(t, http.StatusBadGateway, res.StatusCode)
	lines := logs.lines(t)
	require.NotEmpty(t, lines)
	last := lines[len(lines)-1]
	assert.Equal(t, "WARN", last["level"])
	assert.Equal(t, "request failed", last["msg"])
	assert.EqualValues(t, 502, last["status"])
	assert.Equal(t, strings.TrimPrefix(dead, "http://"), last["backend"])
	assert.EqualValues(t, 1, last["attempts"])
	assert.Equal(t, testClientID, last["client_id"])
	assert.Contains(t, last["err"], "connection refused")
}
