package actors

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// A simulation of N lease holders sharing one client's bucket, on a
// virtual clock (nanoseconds): the holders run the real lease logic, the
// store is simRow, a model of tollgate_renew_leases
// (migrations/00011_scheduled_leases.sql), and the round trips take random
// times.

// simRow models one client's row and its leases as the SQL function
// handles them.
type simRow struct {
	capacity float64
	rate     float64
	tokens   float64
	last     int64
	ttl      int64
	leases   map[int]*simLease // by holder
}

type simLease struct {
	tokens  float64
	seq     int64
	expires int64
}

func newSimRow(capacity, rate float64, ttl int64) *simRow {
	return &simRow{capacity: capacity, rate: rate, tokens: capacity, ttl: ttl, leases: map[int]*simLease{}}
}

// renew is tollgate_renew_leases for one holder and client, at now.
func (r *simRow) renew(h int, q messages.LeaseRenewal, now int64) messages.LeaseGrant {
	for k, l := range r.leases {
		if k != h && l.expires <= now {
			delete(r.leases, k)
		}
	}
	own, found := r.leases[h]
	found = found && own.expires > now
	others, n := 0.0, 0
	for k, l := range r.leases {
		if k != h {
			others += l.tokens
			n++
		}
	}
	if found && own.seq >= q.Seq {
		return messages.LeaseGrant{Applied: false, RowTokens: r.tokens, Leased: others + own.tokens, Holders: n + 1}
	}
	mine, back := 0.0, 0.0
	if found {
		mine = min(max(q.Outstanding, 0), own.tokens)
		back = min(max(q.Handback, 0), own.tokens-mine)
		if excess := r.tokens + others + mine - r.capacity; excess > 0 {
			mine = max(mine-excess, min(mine, r.capacity/float64(n+1)))
		}
	}
	debt := max(q.Debt, 0)
	avail := min(r.tokens+back-debt+r.rate*float64(max(now-r.last, 0))/1e9, r.capacity-others-mine)
	avail = max(avail, min(r.tokens, 0)-debt)
	want := max(math.Floor(q.Want), 0)
	var g float64
	if avail >= want*float64(n+1) {
		g = min(want, math.Floor(avail))
	} else {
		g = min(want, max(math.Floor(avail/float64(n+1)), min(1, math.Floor(avail))))
	}
	g = max(g, 0)
	var s float64
	if ahead := q.Ahead.Seconds(); want > g && g >= math.Floor(avail) && r.rate > 0 && r.rate*ahead <= r.capacity {
		s = max(min(want-g, math.Floor(max(q.WantAhead, 0))-g,
			max(math.Floor(r.rate*ahead/float64(n+1)), 1), math.Floor(avail+r.rate*ahead)-g), 0)
	}
	r.tokens, r.last = avail-g-s, now
	holders := n
	if mine+g+s > 0 || want > 0 {
		r.leases[h] = &simLease{tokens: mine + g + s, seq: q.Seq, expires: now + r.ttl}
		holders++
	} else {
		delete(r.leases, h)
	}
	gr := messages.LeaseGrant{Applied: true, Granted: mine + g + s - q.Outstanding, RowTokens: r.tokens,
		Leased: others + mine + g + s, Holders: holders, RatePerSec: r.rate, Capacity: int64(r.capacity), Scheduled: s}
	if s > 0 {
		gr.FirstDue = time.Duration((1 - (avail - g)) / r.rate * 1e9)
	}
	if g == 0 && s == 0 && want > 0 && avail < 1 {
		gr.NextToken = time.Duration((1 - avail) / r.rate * 1e9)
	}
	return gr
}

// total is the row plus every live lease at now: at most capacity.
func (r *simRow) total(now int64) float64 {
	t := r.tokens
	for _, l := range r.leases {
		if l.expires > now {
			t += l.tokens
		}
	}
	return t
}

// Event kinds.
const (
	evArrive  = iota // a request reaches holder h
	evFlush          // holder h sends its batch
	evApply          // the store applies holder h's renewal
	evReply          // holder h gets the answer
	evTimeout        // a waiting request of holder h gives up
	evTick           // the background renewal tick of holder h
)

type simEvent struct {
	at   int64
	kind int
	h    int
	q    messages.LeaseRenewal // evApply
	g    messages.LeaseGrant   // evReply
	seq  int64                 // order among equal times
}

type eventQueue []simEvent

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(simEvent)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// simConfig is one simulated run.
type simConfig struct {
	holders  int
	capacity float64
	rate     float64
	offered  float64 // requests per second over all holders
	duration int64
	// share gives holder h's part of the offered load at time t; the
	// parts sum to 1.
	share func(h, n int, t int64) float64
	seed  uint64
}

// simResult holds the admission times of the leased run and how many a
// single bucket would have admitted from the same arrivals.
type simResult struct {
	admitted []int64
	ideal    int
	offered  int
	waited   int // decisions that waited for a renewal
	renewals int // renewals the store applied
	maxTotal float64
}

type simHolder struct {
	l        lease
	waiting  []int64 // deadlines of requests waiting for a renewal
	flushing bool
}

type sim struct {
	cfg     simConfig
	p       leasePolicy
	row     *simRow
	hs      []*simHolder
	q       eventQueue
	rnd     *rand.Rand
	nseq    int64
	renewNo int64 // renewals applied
	sent    int64 // renewals sent
	ideal   bucket
	res     simResult
}

const simUrgentBatch = 1 * ms // urgent renewals are batched this long
const simTick = 100 * ms      // a full look at every lease, as every other leaseTick
const simMaxWait = 20 * ms    // a request waits at most this long

func runSim(cfg simConfig) simResult {
	s := &sim{cfg: cfg, p: newLeasePolicy(5*time.Second, 10*time.Second),
		rnd: rand.New(rand.NewPCG(cfg.seed, 7))}
	s.row = newSimRow(cfg.capacity, cfg.rate, s.p.ttl)
	s.ideal = bucket{rate: cfg.rate, capacity: int64(cfg.capacity), tokens: cfg.capacity}
	for h := range cfg.holders {
		s.hs = append(s.hs, &simHolder{})
		s.push(simEvent{at: int64(s.rnd.IntN(int(simTick))), kind: evTick, h: h})
	}
	s.push(simEvent{at: s.nextArrival(0), kind: evArrive})
	for s.q.Len() > 0 {
		e := heap.Pop(&s.q).(simEvent)
		if e.at > cfg.duration {
			break
		}
		s.handle(e)
	}
	s.res.renewals = int(s.renewNo)
	return s.res
}

func (s *sim) push(e simEvent) {
	s.nseq++
	e.seq = s.nseq
	heap.Push(&s.q, e)
}

// nextArrival draws the next request of the whole offered load (Poisson).
func (s *sim) nextArrival(now int64) int64 {
	return now + int64(s.rnd.ExpFloat64()/s.cfg.offered*1e9) + 1
}

// pick draws the holder a request at now goes to.
func (s *sim) pick(now int64) int {
	x := s.rnd.Float64()
	for h := range s.cfg.holders {
		x -= s.cfg.share(h, s.cfg.holders, now)
		if x < 0 {
			return h
		}
	}
	return s.cfg.holders - 1
}

// latency is one leg of a round trip: 0.25 to 1.5 ms.
func (s *sim) latency() int64 { return int64(250_000 + s.rnd.IntN(1_250_000)) }

func (s *sim) handle(e simEvent) {
	hd := s.hs[min(e.h, len(s.hs)-1)]
	switch e.kind {
	case evArrive:
		s.push(simEvent{at: s.nextArrival(e.at), kind: evArrive})
		s.res.offered++
		if s.ideal.take(e.at) {
			s.res.ideal++
		}
		s.arrive(s.pick(e.at), e.at)
	case evTick:
		s.push(simEvent{at: e.at + simTick, kind: evTick, h: e.h})
		if hd.l.needRenewal(&s.p, e.at, false) != renewNone {
			s.send(e.h, e.at)
		}
	case evFlush:
		hd.flushing = false
		if hd.l.needRenewal(&s.p, e.at, len(hd.waiting) > 0) != renewNone {
			s.send(e.h, e.at)
		}
	case evApply:
		g := s.row.renew(e.h, e.q, e.at)
		s.renewNo++
		s.res.maxTotal = max(s.res.maxTotal, s.row.total(e.at))
		s.push(simEvent{at: e.at + s.latency(), kind: evReply, h: e.h, g: g})
	case evReply:
		hd.l.granted(&s.p, e.at, e.g)
		s.serveWaiting(e.h, e.at)
	case evTimeout:
		for len(hd.waiting) > 0 && hd.waiting[0] <= e.at {
			hd.waiting = hd.waiting[1:] // refused
		}
	}
}

func (s *sim) arrive(h int, now int64) {
	hd := s.hs[h]
	hd.l.arrive(&s.p, now)
	if len(hd.waiting) == 0 && hd.l.take(now) {
		s.res.admitted = append(s.res.admitted, now)
		if !hd.flushing && hd.l.needRenewal(&s.p, now, false) == renewSoon {
			hd.flushing = true
			s.push(simEvent{at: now + s.p.batch, kind: evFlush, h: h})
		}
		return
	}
	if hd.l.denied(now) {
		return // refused, no store round trip
	}
	hd.waiting = append(hd.waiting, now+simMaxWait)
	s.push(simEvent{at: now + simMaxWait, kind: evTimeout, h: h})
	if !hd.flushing && hd.l.needRenewal(&s.p, now, true) == renewUrgent {
		hd.flushing = true
		s.push(simEvent{at: now + simUrgentBatch, kind: evFlush, h: h})
	}
}

func (s *sim) send(h int, now int64) {
	hd := s.hs[h]
	s.sent++ // a fresh seq per renewal, as a batch number would be
	q := hd.l.renewal(&s.p, now, s.sent, int64(s.cfg.capacity), s.cfg.rate)
	s.push(simEvent{at: now + s.latency(), kind: evApply, h: h, q: q})
}

// serveWaiting admits waiting requests from the fresh lease, in order;
// when the store denied, the rest are refused at once.
func (s *sim) serveWaiting(h int, now int64) {
	hd := s.hs[h]
	for len(hd.waiting) > 0 {
		if hd.l.take(now) {
			s.res.admitted = append(s.res.admitted, now)
			s.res.waited++
			hd.waiting = hd.waiting[1:]
			continue
		}
		if hd.l.denied(now) {
			hd.waiting = hd.waiting[:0]
			return
		}
		break
	}
	if len(hd.waiting) > 0 && !hd.flushing && hd.l.needRenewal(&s.p, now, true) == renewUrgent {
		hd.flushing = true
		s.push(simEvent{at: now + simUrgentBatch, kind: evFlush, h: h})
	}
}

// worstExcess is the largest count of admissions in a window of length w
// (both ends included) minus bound(w).
func worstExcess(times []int64, w int64, bound float64) float64 {
	worst := math.Inf(-1)
	j := 0
	for i := range times {
		for j < len(times) && times[j]-times[i] <= w {
			j++
		}
		worst = max(worst, float64(j-i)-bound)
	}
	return worst
}
