package actors

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// With a store whose buckets several instances share (SPEC 9), a cached
// client's tokens come from a lease instead of the entry's own refill: the
// shard still owns the client and decides every request in memory, and
// entry.b is kept as the instance's view of the bucket (limits, and
// tokens as lease plus the row's last known tokens) for the headers. The
// Leaser renews leases in batches and hands the answers back as messages.

// leaseShared is what the shards and the Leaser share: set up once, then
// only atomics and channels change.
type leaseShared struct {
	policy     leasePolicy
	downPolicy string    // config.StoreDown*
	epoch      time.Time // lease time's zero: see now
	// down is set by the Leaser while renewals fail for want of the store.
	down atomic.Bool
	// soon and urgent wake the Leaser (buffer 1; a full channel means it
	// is already woken).
	soon, urgent chan struct{}
	// decided counts the decisions on leased buckets, waited those of them
	// that waited for a renewal, for the closing log line.
	waited, decided atomic.Int64
}

// leaseMaxWait is how long a request whose lease is empty waits for the
// renewal before it is refused.
const leaseMaxWait = int64(20 * time.Millisecond)

// leased is the lease side of a cached client: the lease, the instance's
// view of the row, requests waiting for a renewal, and the local bucket
// of safe mode.
type leased struct {
	l     lease
	row   float64 // the row's tokens at the last renewal
	rowAt int64   // when (bucket time), for safe mode
	// backSent is what the renewal in flight hands back: the row has it
	// or will, so the instance's view counts it.
	backSent float64
	holders  int  // live holders at the last renewal
	heard    bool // a renewal was applied: holders is the store's count
	due      bool // in the shard's leaseDue set
	waiters  []leaseWaiter
	// safe is the local bucket of safe mode: the store did not answer and
	// the lease is spent. It holds this instance's share of the bucket.
	safe *bucket
	// back is tokens to hand back with the next renewal: the lease moved
	// into safe, or tokens scheduled ahead under limits that changed.
	// safeSpent is the admissions made from safe not yet reported as
	// debt, debtSent those reported in the renewal in flight.
	back, safeSpent, debtSent float64
	// reportSeq is the renewal that carried safe mode's report: only its
	// answer ends safe mode.
	reportSeq int64
}

type leaseWaiter struct {
	r        *admitReq
	deadline int64 // lease time
}

// now is lease time: nanoseconds since the Limiter was made, read from
// the monotonic clock, so a wall-clock step cannot stretch a lease past
// the store's expiry. It starts at 1: 0 means "never" in a lease.
func (ls *leaseShared) now() int64 { return int64(time.Since(ls.epoch)) + 1 }

// Messages between the Leaser and the shards.
type (
	// leaseCollectMsg asks for the renewals due now, numbered seq. full
	// looks at every leased entry, not only those marked due; final hands
	// every lease back (shutdown).
	leaseCollectMsg struct {
		seq   int64
		full  bool
		final bool
		reply chan []leaseOut
	}
	// leaseResultMsg hands back the answers to a batch; err set means the
	// batch failed as a whole.
	leaseResultMsg struct {
		seq   int64
		items []leaseIn
		err   error
		reply chan struct{}
	}
	// leaseWakeTick makes a shard answer waiters whose time is up. Nobody
	// waits for it.
	leaseWakeTick struct{}
)

type leaseOut struct {
	hash messages.KeyHash
	q    messages.LeaseRenewal
}

type leaseIn struct {
	hash  messages.KeyHash
	g     messages.LeaseGrant
	found bool // the store answered for this client
}

// newLeased gives a newly cached entry its (empty) lease in lease mode.
func (s *shard) newLeased(e *entry) {
	if s.cfg.lease != nil {
		// The row as loaded is the last known one, for headers and for
		// safe mode should the store go away before the first renewal.
		e.lz = &leased{holders: 1, row: e.b.tokens, rowAt: e.b.last}
	}
}

// admitLeased decides r from e's lease. A request that must wait for a
// renewal joins e's waiters; told says it already got its "queued" reply
// (it waited for a load).
func (s *shard) admitLeased(e *entry, r *admitReq, told bool) {
	ls, lz, now := s.cfg.lease, e.lz, s.cfg.lease.now()
	lz.l.arrive(&ls.policy, now)
	e.seen = max(e.seen, r.now)
	if len(lz.waiters) == 0 {
		if rep, ok := s.decideLeased(e, r.hash, now, r.now); ok {
			ls.decided.Add(1)
			r.reply <- rep
			return
		}
	}
	lz.waiters = append(lz.waiters, leaseWaiter{r: r, deadline: now + leaseMaxWait})
	// Its caller may give up while it waits: it is claimed again before
	// it is answered, and takes no token if it was abandoned.
	r.release()
	if !told {
		r.reply <- admitReply{queued: true}
	}
	s.markDue(r.hash, lz, ls.urgent)
}

// decideLeased decides a request at now from the lease, or from the
// store-down policy; false means it has to wait for a renewal.
func (s *shard) decideLeased(e *entry, h messages.KeyHash, now, bnow int64) (admitReply, bool) {
	ls, lz := s.cfg.lease, e.lz
	if lz.safe == nil && lz.l.take(now) {
		if !lz.due && lz.l.low() && !lz.l.inflight {
			s.markDue(h, lz, ls.soon)
		}
		return s.leasedReply(e, true, now), true
	}
	if lz.safe != nil || ls.down.Load() {
		return s.storeDownReply(e, h, bnow), true
	}
	if lz.l.denied(now) {
		return s.leasedReply(e, false, now), true
	}
	return admitReply{}, false
}

// leasedReply is the decision as this instance sees the bucket.
func (s *shard) leasedReply(e *entry, ok bool, now int64) admitReply {
	lz := e.lz
	e.b.tokens = min(float64(e.b.capacity), max(lz.l.total()+lz.row+lz.backSent, 0))
	d := e.b.decision(ok)
	if next := lz.l.nextToken(); !ok && next > now {
		d.RetryAfter = max(d.RetryAfter, time.Duration(next-now))
	}
	d.ClientID = e.clientID
	return admitReply{d: d}
}

// storeDownReply decides by rate_limiter.store_down_policy while the store
// cannot renew leases. "safe" admits from a local bucket holding this
// instance's share (1/holders) of the rate and capacity, starting from its
// share of the row as last seen plus what the lease still held: with one
// holder, the bucket goes on as it would with the embedded store.
func (s *shard) storeDownReply(e *entry, h messages.KeyHash, bnow int64) admitReply {
	lz := e.lz
	switch s.cfg.lease.downPolicy {
	case "closed":
		return admitReply{err: messages.ErrUnavailable}
	case "open":
		d := e.b.decision(true)
		d.ClientID = e.clientID
		return admitReply{d: d}
	}
	if lz.safe == nil {
		n := float64(max(lz.holders, 1))
		capacity := max(int64(float64(e.b.capacity)/n), 1)
		// Admitted on credit and not charged yet: spent from the share.
		lz.safe = &bucket{rate: e.b.rate / n, capacity: capacity, last: lz.rowAt,
			tokens: min(float64(capacity), max(lz.row+lz.backSent-lz.safeSpent, 0)/n)}
		lz.safe.refill(bnow)
		// The lease goes into the share: handed back at the next renewal,
		// since what it bought is counted as debt from now on. Tokens
		// scheduled ahead are the share's refill: handed back too.
		lz.safe.tokens = min(float64(capacity), lz.safe.tokens+lz.l.held)
		lz.back += lz.l.total()
		lz.l.held, lz.l.sched = 0, 0
	}
	ok := lz.safe.take(bnow)
	if ok {
		// Owed to the row: reported with the next renewal, soon, since
		// an instance that dies first takes the report with it.
		lz.safeSpent++
		s.markDue(h, lz, s.cfg.lease.soon)
	}
	d := lz.safe.decision(ok)
	d.Limit, d.ClientID = e.b.capacity, e.clientID
	return admitReply{d: d}
}

// slowStoreReply decides a request whose renewal took longer than it may
// wait: the store is as good as unreachable for it, and the store-down
// policy decides, with this instance's share of the bucket as the store
// last told it (holders, row). Before the store has told it anything, the
// instance knows neither: every instance would take itself for the only
// holder of a full row, and N of them would admit N buckets. Such a
// request gets one token on credit, charged to the row with the next
// renewal as safe mode's admissions are, if the client owes none already
// (at most one unpaid per instance: the bound's one token per instance),
// and is refused otherwise.
func (s *shard) slowStoreReply(e *entry, h messages.KeyHash, now, bnow int64) admitReply {
	lz := e.lz
	if lz.heard || s.cfg.lease.down.Load() {
		return s.storeDownReply(e, h, bnow)
	}
	if lz.safe == nil && lz.safeSpent == 0 {
		lz.safeSpent = 1
		s.markDue(h, lz, s.cfg.lease.soon)
		return s.leasedReply(e, true, now)
	}
	rep := s.leasedReply(e, false, now)
	rep.d.RetryAfter = max(rep.d.RetryAfter, time.Duration(leaseMaxWait))
	return rep
}

// markDue puts the entry in the set the Leaser collects from and wakes
// the Leaser.
func (s *shard) markDue(h messages.KeyHash, lz *leased, wake chan struct{}) {
	if !lz.due {
		lz.due = true
		s.leaseDue[h] = struct{}{}
	}
	select {
	case wake <- struct{}{}:
	default:
	}
}

// leaseCollect returns the renewals due now and marks them in flight.
func (s *shard) leaseCollect(m *leaseCollectMsg) []leaseOut {
	p, now := &s.cfg.lease.policy, s.cfg.lease.now()
	var out []leaseOut
	visit := func(h messages.KeyHash, e *entry) {
		lz := e.lz
		lz.due = false
		var q messages.LeaseRenewal
		switch {
		case m.final:
			if lz.l.expires == 0 && !lz.owes() {
				return // never granted, nothing owed: nothing to tell the store
			}
			q = lz.l.release(now, m.seq)
		case lz.l.needRenewal(p, now, len(lz.waiters) > 0) != renewNone,
			lz.owes() && !lz.l.inflight && now >= lz.l.retryAt:
			q = lz.l.renewal(p, now, m.seq, e.b.capacity, e.b.rate)
		default:
			return
		}
		q.ClientID, lz.backSent = e.clientID, q.Handback
		if lz.owes() {
			s.reportSafe(lz, &q)
		}
		out = append(out, leaseOut{hash: h, q: q})
	}
	if m.full || m.final {
		for h, e := range s.cache {
			if e.lz != nil {
				visit(h, e)
			}
		}
	} else {
		for h := range s.leaseDue {
			if e, ok := s.cache[h]; ok && e.lz != nil {
				visit(h, e)
			}
		}
		for h := range s.leaseSched {
			if e, ok := s.cache[h]; ok && e.lz != nil && e.lz.l.sched > 0 {
				if _, done := s.leaseDue[h]; !done {
					visit(h, e)
				}
				continue
			}
			delete(s.leaseSched, h)
		}
	}
	clear(s.leaseDue)
	return out
}

// leaseResult applies a batch's answers and serves the waiters.
func (s *shard) leaseResult(m *leaseResultMsg) {
	p, now, bnow := &s.cfg.lease.policy, s.cfg.lease.now(), s.cfg.clk.now()
	for _, in := range m.items {
		e, ok := s.cache[in.hash]
		if !ok || e.lz == nil || e.lz.l.seq != m.seq || !e.lz.l.inflight {
			continue // evicted, rotated or renewed again since: the grant is lost
		}
		lz := e.lz
		lz.backSent = 0 // in the row now, or lost
		if m.err != nil || !in.found {
			lz.l.failed(now)
			s.serveWaiters(in.hash, e, now, bnow)
			continue
		}
		g := in.g
		lz.l.granted(p, now, g)
		if lz.l.sched > 0 {
			s.leaseSched[in.hash] = struct{}{}
		}
		if g.Applied {
			s.settleSafe(lz, m.seq)
			lz.row, lz.rowAt, lz.holders, lz.heard = g.RowTokens, bnow, g.Holders, true
			// Limits newer than the cached ones: a change whose
			// notification this instance missed.
			// An answer older than the limits known here (their
			// notification overtook it) was sized and scheduled under the
			// old ones: shrink it as if they had changed now.
			c := messages.Client{RatePerSec: g.RatePerSec, Capacity: g.Capacity, Version: g.Version}
			if applyLimits(&e.b, &e.version, c, bnow) || g.Version < e.version {
				shrinkLease(e)
			}
		}
		s.serveWaiters(in.hash, e, now, bnow)
	}
}

// serveWaiters answers e's waiting requests in order, as far as the
// lease (or the store-down policy, or the deny-until) decides them;
// waiters whose 20 ms are up are refused, and if some still wait another
// renewal is asked for at once.
func (s *shard) serveWaiters(h messages.KeyHash, e *entry, now, bnow int64) {
	lz := e.lz
	served := 0
	for _, w := range lz.waiters {
		if w.r.state.Load() == reqAbandoned {
			served++
			continue
		}
		rep, ok := s.decideLeased(e, h, now, bnow)
		if !ok && now < w.deadline {
			break
		}
		if !ok {
			rep = s.slowStoreReply(e, h, now, bnow)
		}
		served++
		if !w.r.claim() {
			continue // abandoned since: the token it took is lost, not minted
		}
		s.cfg.lease.waited.Add(1)
		s.cfg.lease.decided.Add(1)
		w.r.reply <- rep
	}
	n := copy(lz.waiters, lz.waiters[served:])
	clear(lz.waiters[n:])
	lz.waiters = lz.waiters[:n]
	if n > 0 {
		s.markDue(h, lz, s.cfg.lease.urgent)
	}
}

// leaseWake answers the waiters whose time is up.
func (s *shard) leaseWake() {
	now, bnow := s.cfg.lease.now(), s.cfg.clk.now()
	for h, e := range s.cache {
		if e.lz != nil && len(e.lz.waiters) > 0 {
			s.serveWaiters(h, e, now, bnow)
		}
	}
}

// dropLeased answers the waiters of an entry leaving the cache: its key
// is gone.
func dropLeased(e *entry) {
	if e.lz == nil {
		return
	}
	for _, w := range e.lz.waiters {
		if w.r.claim() {
			w.r.reply <- admitReply{err: messages.ErrUnknownKey}
		}
	}
	e.lz.waiters = nil
}

// leaseBusy reports whether an entry must stay cached for its lease: it
// holds tokens not yet handed back, a renewal is out, or requests wait.
func leaseBusy(e *entry) bool {
	return e.lz != nil && (e.lz.l.total() > 0 || e.lz.l.inflight || len(e.lz.waiters) > 0 || e.lz.owes())
}

// owes reports whether the lease has something to report to the row
// besides its renewal: safe mode's, or tokens to hand back.
func (lz *leased) owes() bool { return lz.safe != nil || lz.safeSpent > 0 || lz.back > 0 }

// reportSafe adds to a renewal what the lease owes the row: tokens to
// hand back (once: if that renewal is lost, so are the tokens) and safe
// mode's admissions (debt, sent again until applied). The row pays the
// debt at once, so with one instance the bucket ends where the local one
// did, bar refill it could not add while full.
func (s *shard) reportSafe(lz *leased, q *messages.LeaseRenewal) {
	q.Handback += lz.back
	lz.back = 0
	if lz.safe != nil || lz.safeSpent > 0 {
		q.Debt, lz.debtSent, lz.reportSeq = lz.safeSpent, lz.safeSpent, q.Seq
	}
}

// settleSafe leaves safe mode once the renewal that reported it went
// through (seq): the debt it carried is paid; admissions made from safe
// while it was in flight are taken from the new lease, or owed as debt.
// A grant to a renewal sent before safe mode began is handed back: safe
// mode's share of the row already counted those tokens.
func (s *shard) settleSafe(lz *leased, seq int64) {
	if lz.safe == nil && lz.safeSpent == 0 {
		return
	}
	if lz.reportSeq != seq {
		if lz.safe != nil {
			lz.back += lz.l.total()
			lz.l.held, lz.l.sched = 0, 0
		}
		return
	}
	late := lz.safeSpent - lz.debtSent
	pay := min(late, math.Floor(lz.l.held))
	lz.l.held -= pay
	lz.safe, lz.safeSpent, lz.debtSent = nil, late-pay, 0
}

// detachLease takes a removed entry's lease for the key it moves to
// (rotation). A renewal in flight is written off: its answer goes to the
// old key and is lost, which loses at most its grant.
func detachLease(e *entry) *leased {
	lz := e.lz
	if lz != nil {
		lz.l.inflight, lz.due, lz.backSent = false, false, 0
	}
	e.lz = nil
	return lz
}

// adoptLease gives a newly installed entry the lease of the bucket that
// moved to its key, so a rotation keeps the tokens leased under the old
// key; the store knows the lease by client, not key.
func adoptLease(e *entry, lz *leased) {
	if lz != nil && e.lz != nil {
		e.lz = lz
	}
}

// shrinkLease follows a change of limits at once: a lease within a
// lowered capacity (the next renewal shrinks it to its fair part), no
// "no token before" learnt under the old rate, and no tokens scheduled
// ahead at the old rate (a lowered one would make them early): they go
// back to the row with the next renewal.
func shrinkLease(e *entry) {
	if e.lz != nil {
		e.lz.l.held = min(e.lz.l.held, float64(e.b.capacity))
		e.lz.l.denyUntil = 0
		e.lz.back += e.lz.l.dropScheduled()
	}
}
