package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// End-to-end tests of the forwarding path (SPEC 3) through the real wiring
// of run: real listeners on 127.0.0.1, real backends, the admin API on the
// main port.

func TestRoundRobinSpreadsRequestsEvenly(t *testing.T) {
	bs := []*liveBackend{newLiveBackend(t), newLiveBackend(t), newLiveBackend(t)}
	in := start(t, baseConfig(t, urls(bs...)...))
	hc := newHTTPClient(t)
	c := in.createClient(t, hc, "rr", hugeRate, hugeCapacity)

	const n = 300
	for i := range n {
		r := in.mustForward(t, hc, c.APIKey, "/rr/"+strconv.Itoa(i), nil)
		require.Equal(t, http.StatusOK, r.status, r.body)
	}
	for i, b := range bs {
		assert.InDelta(t, n/len(bs), b.hits.Load(), 1, "backend %d", i)
	}
}

// loadRun is steady load from a few goroutines until stop is called.
type loadRun struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstFail  string
	stopc      chan struct{}
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

// startLoad starts workers sending GETs with key; the load stops at the
// latest when the test ends.
func startLoad(t *testing.T, in *instance, hc *http.Client, key string, workers int) *loadRun {
	l := &loadRun{stopc: make(chan struct{})}
	for w := range workers {
		l.wg.Go(func() { // stop waits for it
			for i := 0; ; i++ {
				select {
				case <-l.stopc:
					return
				default:
				}
				r, err := in.forward(hc, key, fmt.Sprintf("/load/%d/%d", w, i), nil)
				l.record(r, err)
			}
		})
	}
	t.Cleanup(l.stop)
	return l
}

func (l *loadRun) record(r reply, err error) {
	if err == nil && r.status == http.StatusOK {
		l.ok.Add(1)
		return
	}
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.firstFail == "" {
		l.firstFail = fmt.Sprintf("status %d, err %v, body %s", r.status, err, r.body)
	}
}

// stop ends the load and waits for its workers; it may be called again.
func (l *loadRun) stop() {
	l.stopOnce.Do(func() { close(l.stopc) })
	l.wg.Wait()
}

// waitServed waits until the load has had more successful answers.
func (l *loadRun) waitServed(t *testing.T, more int64) {
	t.Helper()
	target := l.ok.Load() + more
	eventually(t, func() bool { return l.ok.Load() >= target })
}

func TestFailoverKeepsServingAndRestoredBackendRejoins(t *testing.T) {
	a, b, victim := newLiveBackend(t), newLiveBackend(t), newLiveBackend(t)
	cfg := baseConfig(t, urls(a, b, victim)...)
	setLB(cfg, map[string]any{"health_check_interval": 0.1, "max_retries": 1})
	in := start(t, cfg)
	hc := newHTTPClient(t)
	c := in.createClient(t, hc, "failover", hugeRate, hugeCapacity)

	load := startLoad(t, in, hc, c.APIKey, 8)
	eventually(t, func() bool { return victim.hits.Load() >= 20 })

	victim.kill()
	eventually(t, func() bool {
		st := in.backendsByURL(t, hc)[victim.url]
		return !st.Healthy && st.LastError != ""
	}, "the killed backend is shown unhealthy with its error")
	load.waitServed(t, 200) // served by the other two meanwhile

	victim.up()
	before := victim.hits.Load()
	eventually(t, func() bool { return victim.hits.Load() >= before+20 },
		"the restored backend gets traffic again after a probe")
	assert.True(t, in.backendsByURL(t, hc)[victim.url].Healthy)

	load.stop()
	assert.Zero(t, load.failed.Load(), "first failure: %s", load.firstFail)
	assert.Positive(t, a.hits.Load())
	assert.Positive(t, b.hits.Load())
	t.Logf("%d requests served, %d failed, %d retried, %d passive ejections", load.ok.Load(), load.failed.Load(),
		len(in.logs.lines("retrying request")), len(in.logs.lines("backend ejected")))
}

func TestAllBackendsDownAnswers503UntilOneReturns(t *testing.T) {
	a, b := newDownBackend(t), newDownBackend(t)
	in := start(t, baseConfig(t, urls(a, b)...))
	hc := newHTTPClient(t)
	c := in.createClient(t, hc, "down", hugeRate, hugeCapacity)

	// Backends start healthy until the first probes fail; requests before
	// that answer 502 after their attempts fail.
	var r reply
	eventually(t, func() bool {
		r = in.mustForward(t, hc, c.APIKey, "/down", nil)
		return r.status == http.StatusServiceUnavailable
	})
	code, msg := jsonError(t, r)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "no healthy backend", msg)
	assert.NotEmpty(t, r.header.Get("X-Request-Id"))
	assert.NotEmpty(t, r.header.Get("X-RateLimit-Limit"), "an admitted request carries the rate-limit headers")
	in.adminJSON(t, hc, http.MethodGet, "/readyz", nil, http.StatusServiceUnavailable, nil)

	b.up()
	eventually(t, func() bool {
		r = in.mustForward(t, hc, c.APIKey, "/up", nil)
		return r.status == http.StatusOK
	}, "a backend that comes back serves after its probe")
	assert.Equal(t, "ok from "+b.addr, r.body)
	in.adminJSON(t, hc, http.MethodGet, "/readyz", nil, http.StatusOK, nil)
	assert.False(t, in.backendsByURL(t, hc)[a.url].Healthy)
}

// headerBackend records the headers of each forwarded request, like the
// echoback demo backend shows them, and sends its own rate-limit header,
// which Tollgate must replace.
func headerBackend(t *testing.T) (url string, seen <-chan http.Header) {
	t.Helper()
	ch := make(chan http.Header, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		ch <- h
		w.Header().Set("X-RateLimit-Limit", "999")
		_, _ = io.WriteString(w, "echo")
	}))
	t.Cleanup(srv.Close)
	return srv.URL, ch
}

func TestHeadersEndToEnd(t *testing.T) {
	backend, seen := headerBackend(t)
	in := start(t, baseConfig(t, backend))
	hc := newHTTPClient(t)
	// Capacity 2 at 0.1/s: the policy window is ceil(2/0.1) = 20 s, and a
	// token takes 10 s, so a slow machine does not refill one mid-test.
	c := in.createClient(t, hc, "headers", 0.1, 2)

	sent := http.Header{"Connection": {"X-Hop"}, "X-Hop": {"dropped"}, "X-Custom": {"kept"}}
	r := in.mustForward(t, hc, c.APIKey, "/h?q=1", sent)
	require.Equal(t, http.StatusOK, r.status, r.body)
	up := <-seen
	t.Run("at the backend", func(t *testing.T) {
		assert.Empty(t, up.Values("Authorization"), "the client's key is not passed on")
		assert.Equal(t, "headers", up.Get("X-Client-Id"))
		assert.Equal(t, "127.0.0.1", up.Get("X-Forwarded-For"))
		assert.Equal(t, "http", up.Get("X-Forwarded-Proto"))
		assert.Equal(t, in.addr, up.Get("X-Forwarded-Host"))
		assert.NotEmpty(t, up.Get("X-Request-Id"))
		assert.Empty(t, up.Values("X-Hop"), "hop-by-hop headers are removed")
		assert.Equal(t, "kept", up.Get("X-Custom"))
	})
	t.Run("admitted answer", func(t *testing.T) {
		assert.Equal(t, up.Get("X-Request-Id"), r.header.Get("X-Request-Id"), "the backend and the client see one id")
		assert.Equal(t, []string{"2"}, r.header.Values("X-RateLimit-Limit"), "the backend's own value is replaced")
		assert.Equal(t, "1", r.header.Get("X-RateLimit-Remaining"))
		assert.Equal(t, `"default";q=2;w=20`, r.header.Get("RateLimit-Policy"))
		assert.Equal(t, `"default";r=1;t=10`, r.header.Get("RateLimit"))
		assert.Equal(t, "echo", r.body)
	})
	t.Run("incoming request id is kept", func(t *testing.T) {
		r := in.mustForward(t, hc, c.APIKey, "/h", http.Header{"X-Request-Id": {"trace-42.a:b"}})
		require.Equal(t, http.StatusOK, r.status, r.body)
		assert.Equal(t, "trace-42.a:b", (<-seen).Get("X-Request-Id"))
		assert.Equal(t, "trace-42.a:b", r.header.Get("X-Request-Id"))
	})
	t.Run("refused answer", func(t *testing.T) {
		r := in.mustForward(t, hc, c.APIKey, "/h", nil)
		require.Equal(t, http.StatusTooManyRequests, r.status, r.body)
		code, msg := jsonError(t, r)
		assert.Equal(t, http.StatusTooManyRequests, code)
		assert.Equal(t, "rate limit exceeded", msg)
		retry, err := strconv.Atoi(r.header.Get("Retry-After"))
		require.NoError(t, err, "Retry-After %q", r.header.Get("Retry-After"))
		assert.GreaterOrEqual(t, retry, 1)
		assert.LessOrEqual(t, retry, 10, "one token takes 10 s at 0.1/s")
		assert.Equal(t, "2", r.header.Get("X-RateLimit-Limit"))
		assert.Equal(t, "0", r.header.Get("X-RateLimit-Remaining"))
		assert.Equal(t, `"default";q=2;w=20`, r.header.Get("RateLimit-Policy"))
		assert.Regexp(t, `^"default";r=0;t=(19|20)$`, r.header.Get("RateLimit"))
		assert.NotEmpty(t, r.header.Get("X-Request-Id"))
		assert.Empty(t, seen, "a refused request never reaches the backend")
	})
	t.Run("missing key", func(t *testing.T) {
		r := in.mustForward(t, hc, "", "/h", nil)
		assert.Equal(t, http.StatusUnauthorized, r.status)
		assert.Equal(t, "Bearer", r.header.Get("WWW-Authenticate"))
		assert.Empty(t, r.header.Get("X-RateLimit-Limit"))
	})
}
