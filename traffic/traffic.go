// Package traffic counts the main port's requests in memory, for the
// dashboard's two views: requests per second by status class over the
// last five minutes, and the clients with the most admitted and the most
// refused requests over about the same time ("who is being throttled?").
// Nothing is stored, exported to Prometheus or shared between instances:
// a client label in Prometheus would grow without bound, while these
// counters hold a fixed amount of memory whatever the number of clients.
//
// Counters implements the pipeline's observer methods it needs
// (ObserveRequest, ObserveAdmission); cmd wires it beside the metrics. It
// starts no goroutines and is safe for concurrent use.
package traffic

import (
	"hash/maphash"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// Window is how far back the views reach.
const Window = 5 * time.Minute

// windowSeconds is Window in whole seconds: the length of every series.
const windowSeconds = int(Window / time.Second)

// series are the per-second counts kept, by the status the client got.
type series int

const (
	total series = iota
	class1xx
	class2xx
	class3xx
	class4xx
	class5xx
	status429 // the limiter's refusals; their answers count in class4xx too
	numSeries
)

// Counters holds both views. The zero value is not usable; use New.
type Counters struct {
	now func() time.Time

	// ring holds one slot per second, indexed by unix second modulo its
	// length. One slot more than the window, so the second being counted
	// never overwrites the oldest second shown.
	ring    [windowSeconds + 1]slot
	resetMu sync.Mutex // serializes reusing a slot for a new second

	// shards split the top lists by a hash of the client id, each under
	// its own lock, so concurrent requests of different clients seldom
	// wait on each other. A client lives in one shard only, so its counts
	// and errors come whole from there.
	seed   maphash.Seed
	shards []shard
	mask   uint64 // len(shards)-1, a power of two
}

// shard is one lock's share of the top lists.
type shard struct {
	mu  sync.Mutex // guards top
	top topClients
	_   [64]byte // keeps the next shard's lock off this cache line
}

// maxShards bounds the shards' memory on machines with many cores.
const maxShards = 64

// shardCount is the power of two at least 4×GOMAXPROCS, capped at
// maxShards: with four times more locks than running goroutines, two
// requests seldom meet on one.
func shardCount() int {
	n := min(4*runtime.GOMAXPROCS(0), maxShards)
	return 1 << bits.Len(uint(n-1))
}

// slot counts one second. sec says which: a slot whose sec is not the
// second asked about holds nothing of it.
type slot struct {
	sec    atomic.Int64
	counts [numSeries]atomic.Uint64
}

// New returns empty Counters reading time from now (time.Now when nil).
func New(now func() time.Time) *Counters {
	if now == nil {
		now = time.Now
	}
	n := shardCount()
	c := &Counters{now: now, seed: maphash.MakeSeed(), shards: make([]shard, n), mask: uint64(n - 1)}
	for i := range c.ring {
		c.ring[i].sec.Store(-1)
	}
	for i := range c.shards {
		c.shards[i].top.init()
	}
	return c
}

// ObserveRequest counts one answered request by the status the client
// got. It is lock-free except once per second, when a slot is reused. A
// 429 counts as a 4xx here; the 429 series counts the limiter's refusals,
// from ObserveAdmission, so a backend's own 429 is not taken for one.
func (c *Counters) ObserveRequest(status int) {
	class := status / 100
	if class < 1 || class > 5 {
		return
	}
	s := c.slotFor(c.now().Unix())
	s.counts[total].Add(1)
	s.counts[class1xx+series(class-1)].Add(1)
}

// slotFor returns the slot of second sec, emptied if it held an older
// second. Counts are zeroed before sec is published, so no count of the
// new second is lost; a writer delayed by a whole window could still add
// to the wrong second, which a dashboard can bear.
func (c *Counters) slotFor(sec int64) *slot {
	s := &c.ring[sec%int64(len(c.ring))]
	if s.sec.Load() == sec {
		return s
	}
	c.resetMu.Lock()
	defer c.resetMu.Unlock()
	if s.sec.Load() != sec {
		for i := range s.counts {
			s.counts[i].Store(0)
		}
		s.sec.Store(sec)
	}
	return s
}

// Rates returns the last Window of complete seconds.
func (c *Counters) Rates() messages.TrafficRates {
	now := c.now().Unix()
	var out [numSeries][]uint64
	for i := range out {
		out[i] = make([]uint64, windowSeconds)
	}
	first := now - int64(windowSeconds)
	for j := range windowSeconds {
		sec := first + int64(j)
		s := &c.ring[sec%int64(len(c.ring))]
		if sec < 0 || s.sec.Load() != sec {
			continue
		}
		for i := range out {
			out[i][j] = s.counts[i].Load()
		}
	}
	return messages.TrafficRates{
		End:   time.Unix(now, 0),
		Total: out[total], Class1xx: out[class1xx], Class2xx: out[class2xx],
		Class3xx: out[class3xx], Class4xx: out[class4xx], Class5xx: out[class5xx],
		Status429: out[status429],
	}
}

// ObserveAdmission counts one admission decision for clientID: in its
// shard's top lists and, for a refusal, in the 429 series. It takes the
// client's shard lock alone.
func (c *Counters) ObserveAdmission(clientID string, allowed bool) {
	now := c.now()
	if !allowed {
		c.slotFor(now.Unix()).counts[status429].Add(1)
	}
	sh := c.shardOf(clientID)
	sh.mu.Lock()
	sh.top.add(now, clientID, allowed)
	sh.mu.Unlock()
}

func (c *Counters) shardOf(clientID string) *shard {
	return &c.shards[maphash.String(c.seed, clientID)&c.mask]
}

// Top returns up to n clients with the most admitted and the most refused
// requests over the last Window (up to one bucket more), largest first.
// It copies one shard at a time under its lock and merges outside it, so
// it holds up admissions of one shard for the length of a copy.
func (c *Counters) Top(n int) (admitted, refused []messages.TopClient) {
	now := c.now()
	var snap topSnapshot
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		snap.copyFrom(&sh.top, now)
		sh.mu.Unlock()
		admitted = snap.admitted.mergeInto(admitted)
		refused = snap.refused.mergeInto(refused)
	}
	return largest(admitted, n), largest(refused, n)
}
