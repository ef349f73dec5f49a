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
	status429 // also counted in Class4xx
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

	mu  sync.Mutex // guards top
	top topClients
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
	c := &Counters{now: now}
	for i := range c.ring {
		c.ring[i].sec.Store(-1)
	}
	c.top.init()
	return c
}

// ObserveRequest counts one answered request by the status the client
// got. It is lock-free except once per second, when a slot is reused.
func (c *Counters) ObserveRequest(status int) {
	class := status / 100
	if class < 1 || class > 5 {
		return
	}
	s := c.slotFor(c.now().Unix())
	s.counts[total].Add(1)
	s.counts[class1xx+series(class-1)].Add(1)
	if status == 429 {
		s.counts[status429].Add(1)
	}
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

// ObserveAdmission counts one admission decision for clientID.
func (c *Counters) ObserveAdmission(clientID string, allowed bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.top.add(now, clientID, allowed)
}

// Top returns up to n clients with the most admitted and the most refused
// requests over the last Window (up to one bucket more), largest first.
func (c *Counters) Top(n int) (admitted, refused []messages.TopClient) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.top.top(now, n, true), c.top.top(now, n, false)
}
