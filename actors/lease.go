package actors

import (
	"math"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// leasePolicy sets how a lease is sized and renewed (SPEC 9). Durations
// are nanoseconds, as the lease's times are.
type leasePolicy struct {
	// ttl is lease_ttl: the store drops a lease not renewed for this long.
	ttl int64
	// margin is how long before the store's expiry the holder stops
	// spending: the holder's clock starts before the store's does, and the
	// margin covers the clocks' drift besides.
	margin int64
	// window is how much of the recent demand a lease is sized for, and
	// the demand average's time constant.
	window int64
	// idle is how long a lease may go unused before it is handed back.
	idle int64
	// refresh is the longest time between two renewals of a held lease:
	// it keeps the lease alive and reports spending.
	refresh int64
	// batch is how long a renewal that is not urgent may wait to join a
	// batch: the lease is renewed while it still lasts that long.
	batch int64
	// ahead is how far ahead a lease that took every token the row had
	// may be given tokens the row refills later, each due at its time.
	ahead int64
	// cool is how long tokens scheduled ahead are kept without a request
	// before they go back: another instance may need them.
	cool int64
}

// newLeasePolicy derives the policy from lease_ttl and the longest time
// between reports of spending (save_state_interval).
func newLeasePolicy(ttl, report time.Duration) leasePolicy {
	return leasePolicy{
		ttl:     int64(ttl),
		margin:  int64(max(ttl/10, 100*time.Millisecond)),
		window:  int64(time.Second),
		idle:    int64(time.Second),
		refresh: int64(min(ttl/2, report)),
		batch:   int64(10 * time.Millisecond),
		ahead:   int64(min(250*time.Millisecond, ttl/4)),
		cool:    int64(50 * time.Millisecond),
	}
}

// renewal kinds, as needRenewal reports them.
const (
	renewNone   = iota
	renewSoon   // in the next batch: running low, due for a report, idle
	renewUrgent // a request waits for it: batch within a millisecond or two
)

// lease is this instance's slice of one client's shared bucket: tokens
// taken from the store's row ahead of need, spent here without asking the
// store. Like bucket, its methods are pure functions of the time passed
// in (nanoseconds of a monotonic clock); the shard that owns the client is
// the only one to touch it.
//
// Past its limit, a client's lease holds tokens scheduled ahead: the row
// had none left, so the store granted the next ones it will refill, each
// due at its time. They are spent when due, without a round trip, and the
// lease is renewed for the next ones before they run out: an over-limit
// client costs a few renewals a second and no request waits.
//
// Invariants: held, sched >= 0; held + sched never exceeds what the store
// counts as this lease (every report only lowers the store's count, and
// a grant is added only once its reply arrives); a scheduled token falls
// due no earlier than the store refills it (its time counts from the
// reply, after the store's clock read); nothing is spent at or after
// expires, which lies margin before the store's own expiry.
type lease struct {
	held    float64 // tokens this instance may spend now
	sched   float64 // tokens scheduled ahead, not due yet
	schedAt int64   // when the next scheduled token falls due
	step    int64   // between two scheduled tokens: one at the row's rate
	rate    float64 // the row's rate at the last answer
	// keep caps what scheduled tokens falling due may bring held up to:
	// the capacity. A bucket does not fill past it; due tokens nobody
	// spent would otherwise pile up and go in one burst.
	keep    float64
	expires int64 // spend nothing from here on (0: no lease yet)

	demand  float64 // requests per second, an exponential average
	since   int64   // first request of the current run of demand
	arrived int64   // last request, admitted or not
	used    int64   // last token spent

	lastGrant float64 // size of the last positive grant
	// renewBelow is threshold as of the last answer: a take that leaves
	// less asks for a renewal, without reading the demand average.
	renewBelow float64
	denyUntil  int64 // the store had no token before this

	seq      int64 // last renewal sent
	inflight bool  // a renewal is out: single flight per client
	sentAt   int64 // when it was sent
	latency  int64 // renewal round trip, an exponential average
	retryAt  int64 // after a failed renewal, none before this
}

// leaseRetry is the pause after a failed renewal: a store that is down
// gets one attempt per client and pause, not one per request.
const leaseRetry = int64(250 * time.Millisecond)

// arrive counts a request in the demand average.
func (l *lease) arrive(p *leasePolicy, now int64) {
	d := l.decayed(p, now)
	if d < 1e-3 {
		d, l.since = 0, now // demand starts over: see demandAt
	}
	l.demand = d + 1e9/float64(p.window)
	l.arrived = max(l.arrived, now)
}

// demandAt is the demand average as of now. An average that started from
// nothing under-reads its first windows (after a quarter window, a steady
// rate reads as 22% of itself), and a lease sized by it would run dry
// again and again while demand ramps up: it is divided by the weight the
// average has had time to gather, counting at least a quarter window.
func (l *lease) demandAt(p *leasePolicy, now int64) float64 {
	age := float64(max(now-l.since, p.window/4))
	return l.decayed(p, now) / -math.Expm1(-age/float64(p.window))
}

// decayed is the raw average decayed to now.
func (l *lease) decayed(p *leasePolicy, now int64) float64 {
	if l.demand == 0 || now <= l.arrived {
		return l.demand
	}
	return l.demand * math.Exp(-float64(now-l.arrived)/float64(p.window))
}

// low reports whether the lease ran below the level at which a renewal
// is due; cheap enough for every decision (time-based renewals are found
// by the Leaser's periodic look at every lease).
func (l *lease) low() bool { return l.total() < l.renewBelow }

// total is every token of the lease, due or not: what the store counts.
func (l *lease) total() float64 { return l.held + l.sched }

// take spends one leased token if there is one due and the lease has not
// expired; an expired lease's tokens are lost (the store has swept them
// or is about to).
func (l *lease) take(now int64) bool {
	if now >= l.expires {
		l.held, l.sched = 0, 0
	}
	if l.held < 1 && l.sched > 0 {
		l.fallDue(now)
	}
	if l.held < 1 {
		return false
	}
	l.held--
	l.used = max(l.used, now)
	return true
}

// fallDue moves the scheduled tokens due by now into held, up to keep;
// the rest are lost, as refill into a full bucket is.
func (l *lease) fallDue(now int64) {
	if now < l.schedAt {
		return
	}
	k := min(l.sched, float64((now-l.schedAt)/l.step+1))
	l.held += min(k, max(l.keep-l.held, 0))
	l.sched -= k
	l.schedAt += int64(k) * l.step
}

// denied reports whether the lease knows there is no token for a request
// before some later time: the store said so, or the next token is
// scheduled. The request can be refused without asking the store.
func (l *lease) denied(now int64) bool {
	return now < l.denyUntil || (l.sched >= 1 && now < l.schedAt)
}

// nextToken is when a denied request could next be admitted, for its
// Retry-After.
func (l *lease) nextToken() int64 {
	if l.sched >= 1 {
		return max(l.denyUntil, l.schedAt)
	}
	return l.denyUntil
}

// cooled reports whether tokens scheduled ahead went unasked for long
// enough to be handed back: cool, or three of the requests' usual gaps
// for a client seldom seen here, at most the idle time.
func (l *lease) cooled(p *leasePolicy, now int64) bool {
	if l.sched <= 0 {
		return false
	}
	quiet := now - l.arrived
	if quiet < p.cool {
		return false
	}
	if d := l.demandAt(p, l.arrived); d > 0 {
		return quiet >= min(int64(3e9/d), p.idle)
	}
	return true
}

// dropScheduled gives up the tokens scheduled ahead, which the caller
// hands back, and returns how many.
func (l *lease) dropScheduled() float64 {
	s := l.sched
	l.sched = 0
	return s
}

// schedule adds s tokens due from first, one every step, to those
// scheduled already. The two runs merge into one that is never early for
// either: the merged run starts late enough that its tokens after the old
// ones are not ahead of the new run, and takes the slower step.
func (l *lease) schedule(first, step int64, s float64) {
	if l.sched <= 0 {
		l.sched, l.schedAt, l.step = s, first, step
		return
	}
	l.step = max(l.step, step)
	l.schedAt = max(l.schedAt, first-int64(math.Ceil(l.sched))*l.step)
	l.sched += s
}

// needRenewal says whether the lease should be renewed now, and how
// urgently. A renewal in flight answers renewNone: single flight.
func (l *lease) needRenewal(p *leasePolicy, now int64, waiting bool) int {
	switch {
	case l.inflight || now < l.retryAt:
		return renewNone
	case waiting && !l.denied(now):
		return renewUrgent
	case l.total() >= 1 && now-max(l.used, l.arrived) >= p.idle:
		return renewSoon // hand it back
	case l.cooled(p, now):
		return renewSoon // hand back what is scheduled ahead
	case l.total() > 0 && now-l.sentAt >= p.refresh:
		return renewSoon // report spending, keep it alive
	case now < l.denyUntil || now-l.arrived >= p.idle:
		return renewNone
	case l.total() < l.threshold(p, now):
		return renewSoon // before the tokens, due or scheduled, run out
	}
	return renewNone
}

// threshold is the level below which a lease in use is renewed: before
// it runs out, with room for the demand expected during a round trip.
// Past the limit (tokens scheduled ahead), the lease runs out at the
// row's rate, not at the demand's.
func (l *lease) threshold(p *leasePolicy, now int64) float64 {
	d := l.demandAt(p, now)
	if l.sched > 0 {
		d = min(d, l.rate)
	}
	return max(0.1*l.lastGrant, d*float64(l.latency+p.batch)/1e9) + 1
}

// want is the size asked for: about a window of recent demand, at least
// one token, never above what the row can give in a window (capacity and
// its refill meanwhile, which tokens scheduled ahead may come from).
func (l *lease) want(p *leasePolicy, now int64, capacity int64, rate float64) float64 {
	target := math.Ceil(l.demandAt(p, now) * float64(p.window) / 1e9)
	return min(max(target-math.Floor(l.total()), 1), float64(capacity)+math.Floor(rate*float64(p.window)/1e9))
}

// wantAhead is how many tokens the lease expects to need within the
// horizon of tokens scheduled ahead: the store schedules no more.
func (l *lease) wantAhead(p *leasePolicy, now int64) float64 {
	return max(math.Ceil(l.demandAt(p, now)*float64(p.ahead)/1e9)-math.Floor(l.total()), 0)
}

// renewal starts a renewal as of now and returns it. An idle lease is
// handed back whole and asks for nothing, a cooled one hands back what is
// scheduled ahead; otherwise it asks for want. The lease's expiry clock
// for the answer starts now, before the store's.
func (l *lease) renewal(p *leasePolicy, now int64, seq int64, capacity int64, rate float64) messages.LeaseRenewal {
	if now >= l.expires {
		l.held, l.sched = 0, 0
	}
	r := messages.LeaseRenewal{Seq: seq}
	switch {
	case now-max(l.used, l.arrived) >= p.idle:
		r.Handback, l.held, l.sched = l.total(), 0, 0
	case l.cooled(p, now):
		r.Handback = l.dropScheduled()
	default:
		r.Want = l.want(p, now, capacity, rate)
		r.Ahead, r.WantAhead = time.Duration(p.ahead), l.wantAhead(p, now)
	}
	r.Outstanding = l.total()
	l.seq, l.inflight, l.sentAt = seq, true, now
	return r
}

// release hands the whole lease back (shutdown): nothing held, nothing
// asked for, so the store drops the lease and its row gets the tokens.
func (l *lease) release(now, seq int64) messages.LeaseRenewal {
	if now >= l.expires {
		l.held, l.sched = 0, 0
	}
	r := messages.LeaseRenewal{Seq: seq, Handback: l.total()}
	l.held, l.sched = 0, 0
	l.seq, l.inflight, l.sentAt = seq, true, now
	return r
}

// granted applies the store's answer to the renewal in flight, at now.
func (l *lease) granted(p *leasePolicy, now int64, g messages.LeaseGrant) {
	l.inflight = false
	l.observeLatency(now - l.sentAt)
	if !g.Applied {
		return
	}
	// A lease the store shrank loses its latest tokens first: those
	// scheduled ahead, then those held.
	due := g.Granted - g.Scheduled
	if due < 0 {
		cut := min(l.sched, -due)
		l.sched -= cut
		due += cut
	}
	l.held = max(0, l.held+due)
	l.keep = max(float64(g.Capacity), 1)
	if g.RatePerSec > 0 {
		l.rate = g.RatePerSec
		if g.Scheduled > 0 {
			// Due times count from the reply, which is later than the
			// store's clock read: never early.
			l.schedule(now+int64(g.FirstDue), int64(math.Ceil(1e9/g.RatePerSec)), g.Scheduled)
		}
	}
	if now >= l.sentAt+p.ttl-p.margin {
		// The answer took so long that the lease is as good as expired.
		l.held, l.sched = 0, 0
	}
	l.expires = l.sentAt + p.ttl - p.margin
	if g.Granted > 0 {
		l.lastGrant = g.Granted
	}
	l.renewBelow = l.threshold(p, now)
	// The row's next token, also when the lease still holds some: once
	// they are spent, requests before it are refused without asking.
	l.denyUntil = 0
	if g.NextToken > 0 {
		l.denyUntil = l.sentAt + int64(g.NextToken)
	}
}

// failed notes that the renewal in flight got no answer. The store may or
// may not have applied it: a handback is counted as given, a grant as
// never made, and the lease keeps its old expiry.
func (l *lease) failed(now int64) {
	l.inflight = false
	l.retryAt = now + leaseRetry
}

func (l *lease) observeLatency(d int64) {
	if l.latency == 0 {
		l.latency = d
		return
	}
	l.latency += (d - l.latency) / 8
}
