package main

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// weightedBackends is a load_balancer.backends list.
func weightedBackends(bs []*liveBackend, weights ...int) []map[string]any {
	out := make([]map[string]any, len(bs))
	for i, b := range bs {
		out[i] = map[string]any{"url": b.url, "weight": weights[i]}
	}
	return out
}

func TestWeightedRoundRobinInterleaves3To1(t *testing.T) {
	heavy, light := namedBackend(t, "h"), namedBackend(t, "l")
	cfg := baseConfig(t)
	lb := lbOf(cfg)
	delete(lb, "backend_urls")
	lb["backends"] = weightedBackends([]*liveBackend{heavy, light}, 3, 1)
	in := start(t, cfg)
	hc := newHTTPClient(t)
	c := in.createClient(t, hc, "weights", hugeRate, hugeCapacity)

	var seq strings.Builder
	for range 400 {
		r := in.mustForward(t, hc, c.APIKey, "/", nil)
		require.Equal(t, http.StatusOK, r.status, r.body)
		seq.WriteString(r.body)
	}
	s := seq.String()
	assert.InDelta(t, 300, strings.Count(s, "h"), 2, s)
	assert.InDelta(t, 100, strings.Count(s, "l"), 2, s)
	assert.NotContains(t, s, "hhhh", "never more than 3 in a row on the heavy one")
}

func TestLeastRequestSendsFewerToTheSlowBackend(t *testing.T) {
	fast := namedBackend(t, "f")
	slow := newLiveBackendWith(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(100 * time.Millisecond) // the slowness under test, not a wait
		_, _ = w.Write([]byte("s"))
	}))
	cfg := baseConfig(t, fast.url, slow.url)
	setLB(cfg, map[string]any{"policy": "least_request", "health_check_interval": 10, "health_check_timeout": 5})
	in := start(t, cfg)
	hc := newHTTPClient(t)
	c := in.createClient(t, hc, "lr", hugeRate, hugeCapacity)

	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 16 {
		wg.Go(func() {
			for range 25 {
				if r, err := in.forward(hc, c.APIKey, "/", nil); err != nil || r.status != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	assert.Zero(t, failed.Load())
	t.Logf("fast %d, slow %d", fast.hits.Load(), slow.hits.Load())
	assert.Less(t, slow.hits.Load()*2, fast.hits.Load(), "the slow backend gets far fewer")
}

// retryCounter is a backend pair's view of retries: an attempt whose
// X-Request-Id it has seen before is a retry. It records the most retries
// in flight at once.
type retryCounter struct {
	mu       sync.Mutex
	seen     map[string]bool
	inFlight int
	peak     int
	retries  int
}

func (rc *retryCounter) handler(hold time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		rc.mu.Lock()
		retry := rc.seen[id]
		rc.seen[id] = true
		if retry {
			rc.retries++
			rc.inFlight++
			rc.peak = max(rc.peak, rc.inFlight)
		}
		rc.mu.Unlock()
		time.Sleep(hold) // keeps the attempt in flight, as a slow failing backend does
		if retry {
			rc.mu.Lock()
			rc.inFlight--
			rc.mu.Unlock()
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
}

func TestRetryBudgetBoundsRetriesInFlight(t *testing.T) {
	rc := &retryCounter{seen: map[string]bool{}}
	a, b := newLiveBackendWith(t, rc.handler(50*time.Millisecond)), newLiveBackendWith(t, rc.handler(50*time.Millisecond))
	cfg := baseConfig(t, a.url, b.url)
	setLB(cfg, map[string]any{
		"max_retries": 1,
		// Probes on this loaded loopback must not time out: the test is
		// about the budget, not health.
		"health_check_interval": 10,
		"health_check_timeout":  5,
		"outlier":               map[string]any{"consecutive_failures": 0},
		"retry_budget":          map[string]any{"percent": 20, "min_retries": 3},
	})
	in := start(t, cfg)
	hc := newHTTPClient(t)
	c := in.createClient(t, hc, "budget", hugeRate, hugeCapacity)

	const clients = 200
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	ready.Add(clients)
	go503 := make(chan struct{})
	var not503 atomic.Int64
	for range clients {
		wg.Go(func() {
			ready.Done()
			<-go503
			r, err := in.forward(hc, c.APIKey, "/", nil)
			if err != nil || r.status != http.StatusServiceUnavailable {
				not503.Add(1)
			}

		})
	}
	ready.Wait()
	close(go503)
	wg.Wait()
	assert.Zero(t, not503.Load(), "every client gets the backends' 503")
	rc.mu.Lock()
	defer rc.mu.Unlock()
	t.Logf("retries %d, peak in flight %d", rc.retries, rc.peak)
	assert.LessOrEqual(t, rc.peak, 40, "20%% of 200 requests in flight")
	assert.Positive(t, rc.retries)
	assert.Less(t, rc.retries, clients, "some retries were refused")
	refused := metricValue(scrape(t, hc, in.addr), "tollgate_retries_refused_total", nil)
	assert.Equal(t, float64(clients-rc.retries), refused)
}

func TestReloadChangesWeightsAndPolicy(t *testing.T) {
	a, b := namedBackend(t, "a"), namedBackend(t, "b")
	la := startLiveApp(t, baseConfig(t, a.url, b.url))
	key := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "w", "rate_per_sec": 1000, "capacity": 1000}).APIKey
	split := func(n int) string {
		var sb strings.Builder
		for range n {
			code, body, err := opsDo(la.hc, http.MethodGet, "http://"+la.addr+"/", key, nil)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, code)
			sb.Write(body)
		}
		return sb.String()
	}
	s := split(8)
	assert.Equal(t, 4, strings.Count(s, "a"), s)

	la.rewrite(t, func(c map[string]any) {
		lb := lbOf(c)
		delete(lb, "backend_urls")
		lb["backends"] = weightedBackends([]*liveBackend{a, b}, 1, 3)
	})
	require.NoError(t, la.reload(t))
	s = split(40)
	assert.Equal(t, 30, strings.Count(s, "b"), s)
	st := opsBackends(t, la.hc, la.addr)
	assert.EqualValues(t, 3, st[b.url]["weight"])

	la.rewrite(t, func(c map[string]any) { lbOf(c)["policy"] = "least_request" })
	require.NoError(t, la.reload(t))
	assert.Equal(t, "least_request", la.a.live.cfg.LoadBalancer.Policy)
	assert.Len(t, split(10), 10)
}
