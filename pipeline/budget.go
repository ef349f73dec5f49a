package pipeline

import "sync/atomic"

// retryBudget is Envoy's retry budget (SPEC 10): retries in flight stay
// within max(minRetries, percent% of the requests in flight), so a failing
// fleet sees a bounded extra load rather than a retry storm. Its counters
// are atomics shared by every request; the zero value counts nothing in
// flight.
//
// The bound holds at each admission: a retry counts itself in before it
// checks, so racing retries cannot all slip under it. Requests finishing
// afterwards may leave the retries already in flight above the new bound
// until they end; none is admitted meanwhile.
type retryBudget struct {
	requests atomic.Int64 // requests being forwarded
	retries  atomic.Int64 // retry attempts in flight
}

// budgetLimits are the budget's settings, reloadable with the others.
type budgetLimits struct {
	percent    float64 // of requests in flight, 0..100
	minRetries int64   // always allowed
}

// startRequest counts a request in; endRequest counts it out.
func (rb *retryBudget) startRequest() { rb.requests.Add(1) }
func (rb *retryBudget) endRequest()   { rb.requests.Add(-1) }

// acquire admits one retry attempt, or reports false when the budget is
// spent. An admitted retry is released with release when it ends.
func (rb *retryBudget) acquire(l budgetLimits) bool {
	n := rb.retries.Add(1)
	if n <= l.minRetries || float64(n) <= l.percent/100*float64(rb.requests.Load()) {
		return true
	}
	rb.retries.Add(-1)
	return false
}

func (rb *retryBudget) release() { rb.retries.Add(-1) }
