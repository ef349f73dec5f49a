package pipeline

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRetryBudgetBound(t *testing.T) {
	tests := []struct {
		name     string
		limits   budgetLimits
		requests int
		admitted int
	}{
		{"min_retries when few requests", budgetLimits{percent: 20, minRetries: 3}, 5, 3},
		{"percent of many requests", budgetLimits{percent: 20, minRetries: 3}, 200, 40},
		{"fractions round down", budgetLimits{percent: 20, minRetries: 0}, 14, 2},
		{"nothing at all", budgetLimits{percent: 0, minRetries: 0}, 100, 0},
		{"100 percent: every request may retry", budgetLimits{percent: 100, minRetries: 0}, 50, 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rb retryBudget
			for range tt.requests {
				rb.startRequest()
			}
			got := 0
			for range tt.requests {
				if rb.acquire(tt.limits) {
					got++
				}
			}
			assert.Equal(t, tt.admitted, got)
			assert.Equal(t, int64(tt.admitted), rb.retries.Load(), "refused retries leave no trace")
			rb.release()
			assert.True(t, rb.acquire(tt.limits) || tt.admitted == 0, "a released retry frees its place")
		})
	}
}

func TestRetryBudgetUnderConcurrency(t *testing.T) {
	var rb retryBudget
	l := budgetLimits{percent: 20, minRetries: 3}
	const requests = 200
	for range requests {
		rb.startRequest()
	}
	var inFlight, peak atomic.Int64
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			for range 50 {
				if !rb.acquire(l) {
					continue
				}
				n := inFlight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				inFlight.Add(-1)
				rb.release()
			}
		})
	}
	wg.Wait()
	assert.LessOrEqual(t, peak.Load(), int64(40))
	assert.Positive(t, peak.Load())
	assert.Zero(t, rb.retries.Load())
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		if rb.acquire(l) {
			rb.release()
		}
	}))
}
