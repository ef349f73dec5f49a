package pipeline

import "github.com/tollgate/tollgate/messages"

// RetryBudget is Envoy's retry budget (SPEC 10): retries in flight stay
// within max(MinRetries, Percent% of the requests in flight). Past it, a
// failed attempt's answer goes to the client as it is.
type RetryBudget struct {
	Percent    float64 // 0..100
	MinRetries int
}

// SetBalancing changes the balancing policy (PolicyRoundRobin, the
// default, or PolicyLeastRequest) and the retry budget for requests that
// start after it returns; a nil budget leaves retries to max_retries
// alone. Safe to call while serving.
func (p *Pipeline) SetBalancing(policy string, budget *RetryBudget) {
	p.lb.setPolicy(policy)
	if budget == nil {
		p.budgetLimits.Store(nil)
		return
	}
	p.budgetLimits.Store(&budgetLimits{
		percent:    min(max(budget.Percent, 0), 100),
		minRetries: int64(max(budget.MinRetries, 0)),
	})
}

// The exchange's part in balancing and the retry budget: which counters it
// holds, so that each is given back exactly once, at the end of the
// attempt when it failed, else when the request ends.

// beginRequest counts the request in the retry budget's requests in
// flight, when a budget is set.
func (x *exchange) beginRequest() {
	if x.p.budgetLimits.Load() != nil {
		x.p.budget.startRequest()
		x.inBudget = true
	}
}

// beginAttempt counts an attempt on b in b's requests in flight, which
// least_request reads; under round_robin nothing is counted, so that
// policy pays nothing for the other.
func (x *exchange) beginAttempt(b messages.Backend) {
	if b.Load != nil && x.p.lb.leastRequest.Load() {
		b.Load.InFlight.Add(1)
		x.load = b.Load
	}
}

// endAttempt gives back what the current attempt holds: its place among
// b's requests in flight and its retry in the budget.
func (x *exchange) endAttempt() {
	if x.load != nil {
		x.load.InFlight.Add(-1)
		x.load = nil
	}
	if x.retrying {
		x.p.budget.release()
		x.retrying = false
	}
}

// mayRetry asks the retry budget for one more attempt; with no budget set
// the answer is yes. A refusal is counted.
func (x *exchange) mayRetry() bool {
	l := x.p.budgetLimits.Load()
	if l == nil || !x.inBudget {
		return true
	}
	if x.p.budget.acquire(*l) {
		x.retrying = true
		return true
	}
	if x.p.obs != nil {
		x.p.obs.RetryRefused(x.last)
	}
	return false
}

// endRequest gives back everything the request still holds.
func (x *exchange) endRequest() {
	x.endAttempt()
	if x.inBudget {
		x.p.budget.endRequest()
		x.inBudget = false
	}
}
