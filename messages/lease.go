package messages

import "time"

// LeaseRenewal is one holder's report on its lease of one client's tokens,
// and its ask for more (SPEC 9). A holder sends one per client per batch.
type LeaseRenewal struct {
	ClientID string
	// Seq orders the holder's renewals: the store applies nothing from a
	// renewal whose Seq is not above the last one it applied.
	Seq int64
	// Outstanding is how many leased tokens the holder still has, as of
	// sending, not counting Handback. It only lowers the store's count: a
	// holder never gains tokens by reporting more.
	Outstanding float64
	// Handback is tokens the holder gives back to the row.
	Handback float64
	// Want is how many whole tokens the holder asks for on top.
	Want float64
	// Debt is tokens the holder admitted without a lease while the store
	// was away: the row pays them back, going below zero if it must.
	Debt float64
	// Ahead is how far ahead a holder that takes every token the row has
	// may be granted tokens the row has not refilled yet (Scheduled), and
	// WantAhead how many tokens in all it expects to spend by then: past
	// its limit, a client costs a few renewals a second, and its requests
	// wait for none.
	Ahead     time.Duration
	WantAhead float64
}

// LeaseGrant is the store's answer to one LeaseRenewal, with what the
// holder needs to check its copy of the client.
type LeaseGrant struct {
	ClientID string
	// Applied is false for a renewal that arrived after a newer one: it
	// changed nothing and Granted is 0.
	Applied bool
	// Granted is the holder's new lease minus the Outstanding it reported:
	// add it to what the holder has now (never going below zero). It is
	// negative when the lease shrank (capacity lowered, lease expired).
	Granted float64
	// RowTokens and Leased are the row's tokens and the sum of every live
	// lease, this one included, after the renewal.
	RowTokens float64
	Leased    float64
	// Holders counts the live leases, this one included if it is kept.
	Holders int
	// The client as stored now: a renewal heals a missed notification.
	RatePerSec float64
	Capacity   int64
	KeyHash    KeyHash
	// Version changes with every admin change to the client.
	Version int64
	// NextToken, when nothing was granted to a holder that wanted tokens,
	// is how long until the row holds one.
	NextToken time.Duration
	// Scheduled is how many of the tokens in Granted are not due yet:
	// the first falls due FirstDue after the store applied the renewal,
	// the others one by one at RatePerSec. The row went below zero by
	// them, so that it refills them for this holder alone.
	Scheduled float64
	FirstDue  time.Duration
}

// LeaseStats is one instance's lease figures (SPEC 9), for its metrics:
// counts since start, and whether renewals fail for want of the store now.
type LeaseStats struct {
	// Statements are renewal batches sent, Renewals the clients in them,
	// FailedStatements the batches that failed or got no answer.
	Statements, Renewals, FailedStatements int64
	// Decisions are requests decided on leased buckets, Waited those of
	// them that waited for a renewal.
	Decisions, Waited int64
	StoreDown         bool
}
