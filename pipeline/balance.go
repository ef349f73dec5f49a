package pipeline

import (
	"math/rand/v2"
	"sync/atomic"

	"github.com/tollgate/tollgate/messages"
)

// Balancing policies (SPEC 10), as config spells them.
const (
	PolicyRoundRobin   = "round_robin"
	PolicyLeastRequest = "least_request"
)

// balancer chooses the backend of each request's first attempt among a
// registry snapshot. It is lock-free and allocation-free on the request
// path: a snapshot's weighted order is computed once, when a request first
// sees that snapshot, and indexed with an atomic counter afterwards.
type balancer struct {
	leastRequest atomic.Bool
	next         atomic.Uint64 // round-robin position: first attempts only
	table        atomic.Pointer[wrrTable]
}

// setPolicy switches the policy for the picks that follow.
func (lb *balancer) setPolicy(policy string) {
	lb.leastRequest.Store(policy == PolicyLeastRequest)
}

// first returns the index in snap, which must not be empty, of the
// backend for a first attempt, and moves the turn.
func (lb *balancer) first(snap []messages.Backend) int {
	if lb.leastRequest.Load() {
		return powerOfTwo(snap, rand.Uint64())
	}
	return lb.tableFor(snap).index(lb.next.Add(1) - 1)
}

// tableFor returns snap's weighted order, computing it when snap is new.
// Racing requests may each compute it for a new snapshot; any of the equal
// results may stay.
func (lb *balancer) tableFor(snap []messages.Backend) *wrrTable {
	if t := lb.table.Load(); t != nil && t.of(snap) {
		return t
	}
	t := newWRRTable(snap)
	lb.table.Store(t)
	return t
}

// wrrTable is one cycle of nginx's smooth weighted round-robin over a
// snapshot: each backend appears weight times (weights divided by their
// greatest common divisor), spread so that a heavy backend's turns
// interleave with the others' rather than come in a burst. With equal
// weights the order is the snapshot's own and seq is nil.
type wrrTable struct {
	snap []messages.Backend // kept so the array, its identity, is never reused
	seq  []int32            // indexes into snap
}

func (t *wrrTable) of(snap []messages.Backend) bool {
	if len(t.snap) != len(snap) {
		return false
	}
	return len(snap) == 0 || &t.snap[0] == &snap[0]
}

// index returns the backend at position c of the endless sequence.
func (t *wrrTable) index(c uint64) int {
	if t.seq == nil {
		return int(c % uint64(len(t.snap)))
	}
	return int(t.seq[c%uint64(len(t.seq))])
}

func newWRRTable(snap []messages.Backend) *wrrTable {
	t := &wrrTable{snap: snap}
	g := 0
	for _, b := range snap {
		g = gcd(g, weight(b))
	}
	total := 0
	for _, b := range snap {
		total += weight(b) / g
	}
	if total == len(snap) {
		return t // equal weights: plain round-robin
	}
	t.seq = make([]int32, total)
	current := make([]int, len(snap))
	for k := range t.seq {
		best := 0
		for i, b := range snap {
			current[i] += weight(b) / g
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		t.seq[k] = int32(best)
	}
	return t
}

// weight is a backend's weight, at least 1.
func weight(b messages.Backend) int { return max(b.Weight, 1) }

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// inFlight is b's attempts in flight; 0 for a Backend that counts nothing.
func inFlight(b messages.Backend) int64 {
	if b.Load == nil {
		return 0
	}
	return b.Load.InFlight.Load()
}

// lessLoaded reports whether a has fewer attempts in flight than b for
// its weight: (in flight + 1) / weight, compared without division.
func lessLoaded(a, b messages.Backend) bool {
	return (inFlight(a)+1)*int64(weight(b)) < (inFlight(b)+1)*int64(weight(a))
}

// powerOfTwo is least_request's pick: of two distinct backends drawn at
// random from r, the less loaded for its weight (ties to the first).
func powerOfTwo(snap []messages.Backend, r uint64) int {
	n := uint64(len(snap))
	if n == 1 {
		return 0
	}
	i := r % n
	j := (r >> 32) % (n - 1)
	if j >= i {
		j++
	}
	if lessLoaded(snap[j], snap[i]) {
		return int(j)
	}
	return int(i)
}

// leastLoaded returns the index of the least loaded backend of snap for
// its weight that tried does not hold, or -1 when every one was tried.
func leastLoaded(snap []messages.Backend, tried []int) int {
	best := -1
	for i, b := range snap {
		if containsID(tried, b.ID) {
			continue
		}
		if best < 0 || lessLoaded(b, snap[best]) {
			best = i
		}
	}
	return best
}
