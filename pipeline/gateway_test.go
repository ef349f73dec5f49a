package pipeline

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// withLoads gives the harness's backends counters, as the registry's have.
func withLoads(h *harness) []messages.Backend {
	bs := h.p.backends.Healthy()
	for i := range bs {
		bs[i].Load = new(messages.BackendLoad)
	}
	return bs
}

func TestRetryBudgetSpentDeliversTheFailedAnswer(t *testing.T) {
	bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
	ok := newBackend(t, answering(http.StatusOK, "ok"))
	rec := newRecorder()
	h := newHarness(t, setup{backends: []string{bad.URL, ok.URL}, opts: Options{
		MaxRetries: 1, Observer: rec, RetryBudget: &RetryBudget{Percent: 0, MinRetries: 0},
	}})
	res, body := h.do(t, request{})
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.Equal(t, "busy", body, "the backend's answer, as it is")
	assert.Equal(t, []string{
		"attempt " + bad.Listener.Addr().String() + " bad_status",
		"retry_refused " + bad.Listener.Addr().String(),
		"request " + bad.Listener.Addr().String() + " 503",
	}, rec.wait(t))
	assert.Zero(t, ok.hits.Load())

	h.p.SetBalancing(PolicyRoundRobin, &RetryBudget{MinRetries: 1})
	h.p.lb.next.Store(0)
	res, body = h.do(t, request{})
	assert.Equal(t, http.StatusOK, res.StatusCode, "min_retries allows one")
	assert.Equal(t, "ok", body)

	h.p.SetBalancing(PolicyRoundRobin, nil)
	h.p.lb.next.Store(0)
	res, _ = h.do(t, request{})
	assert.Equal(t, http.StatusOK, res.StatusCode, "no budget: max_retries alone")
}

// TestCountersReturnToZero runs requests that succeed, fail over, fail
// and go away under least_request with a budget, and checks that every
// in-flight count they took is given back.
func TestCountersReturnToZero(t *testing.T) {
	bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
	ok := newBackend(t, answering(http.StatusOK, "ok"))
	slow := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	h := newHarness(t, setup{backends: []string{bad.URL, ok.URL, slow.URL, deadURL(t)}, opts: Options{
		MaxRetries: 3, Policy: PolicyLeastRequest, RetryBudget: &RetryBudget{Percent: 50, MinRetries: 2},
	}})
	bs := withLoads(h)

	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url+"/", nil)
			if !assert.NoError(t, err) {
				return
			}
			req.Header.Set("Authorization", testKey)
			if i%2 == 0 {
				req = req.WithContext(context.Background())
			}
			if res, err := h.client.Do(req); err == nil {
				_ = res.Body.Close()
			}
		})
	}
	wg.Wait()
	require.Eventually(t, func() bool {
		for _, b := range bs {
			if b.Load.InFlight.Load() != 0 {
				return false
			}
		}
		return h.p.budget.requests.Load() == 0 && h.p.budget.retries.Load() == 0
	}, 10*time.Second, 5*time.Millisecond, "every count given back")
	assert.Positive(t, ok.hits.Load())
	assert.Positive(t, bad.hits.Load())
}

func TestLeastRequestFirstAttemptGoesToTheLessLoaded(t *testing.T) {
	a := newBackend(t, answering(http.StatusOK, "a"))
	b := newBackend(t, answering(http.StatusOK, "b"))
	h := newHarness(t, setup{backends: []string{a.URL, b.URL}, opts: Options{Policy: PolicyLeastRequest}})
	bs := withLoads(h)
	bs[0].Load.InFlight.Store(10) // a is busy elsewhere
	for range 20 {
		_, body := h.do(t, request{})
		assert.Equal(t, "b", body)
	}
	assert.Zero(t, bs[1].Load.InFlight.Load())
}
