package traffic

import (
	"cmp"
	"slices"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// Top lists are kept per bucket of bucketSpan, numBuckets of them in a
// ring: the views merge the buckets of the last Window plus the one being
// filled, so they reach between Window and Window+bucketSpan back.
const (
	bucketSpan = 30 * time.Second
	numBuckets = int(Window/bucketSpan) + 1
	// sketchSize is how many clients each bucket's sketch tracks. Clients
	// with more than 1/sketchSize of a bucket's requests are always in it.
	sketchSize = 64
)

// topClients is one shard's windowed view; its shard's mu guards it.
type topClients struct {
	buckets [numBuckets]bucket
}

type bucket struct {
	n        int64 // bucket number (unix time / bucketSpan); -1 when unused
	admitted sketch
	refused  sketch
}

func (t *topClients) init() {
	for i := range t.buckets {
		t.buckets[i].n = -1
	}
}

func bucketOf(now time.Time) int64 { return now.Unix() / int64(bucketSpan/time.Second) }

func (t *topClients) add(now time.Time, clientID string, allowed bool) {
	n := bucketOf(now)
	b := &t.buckets[n%int64(numBuckets)]
	if b.n != n {
		b.n = n
		b.admitted.reset()
		b.refused.reset()
	}
	if allowed {
		b.admitted.add(clientID)
	} else {
		b.refused.add(clientID)
	}
}

// topSnapshot is a copy of one shard's live buckets, taken under its
// lock and merged after it. Its buffers are reused from shard to shard.
type topSnapshot struct {
	admitted, refused sketchCopy
}

// sketchCopy holds the entries of several buckets' sketches of one kind
// back to back; ends[i] is where bucket i's end, floors[i] its floor.
type sketchCopy struct {
	entries []sketchEntry
	ends    []int
	floors  []uint64
}

func (c *sketchCopy) reset() {
	c.entries, c.ends, c.floors = c.entries[:0], c.ends[:0], c.floors[:0]
}

func (c *sketchCopy) add(s *sketch) {
	c.entries = append(c.entries, s.heap...)
	c.ends = append(c.ends, len(c.entries))
	c.floors = append(c.floors, s.floor())
}

// copyFrom copies t's buckets of the last Window and the one being filled.
func (snap *topSnapshot) copyFrom(t *topClients, now time.Time) {
	snap.admitted.reset()
	snap.refused.reset()
	cur := bucketOf(now)
	for i := range t.buckets {
		b := &t.buckets[i]
		if b.n < 0 || b.n <= cur-int64(numBuckets) || b.n > cur {
			continue
		}
		snap.admitted.add(&b.admitted)
		snap.refused.add(&b.refused)
	}
}

// mergeInto sums each client's counts over the copied buckets and appends
// one TopClient per client to out. A client's error is what its entries
// may overcount, plus, for each bucket it is absent from, that bucket's
// floor: what a full sketch may have dropped of it there.
func (c *sketchCopy) mergeInto(out []messages.TopClient) []messages.TopClient {
	type sum struct {
		messages.TopClient
		presentFloors uint64
	}
	var allFloors uint64
	merged := map[string]*sum{}
	start := 0
	for i, end := range c.ends {
		allFloors += c.floors[i]
		for _, e := range c.entries[start:end] {
			m := merged[e.id]
			if m == nil {
				m = &sum{TopClient: messages.TopClient{ClientID: e.id}}
				merged[e.id] = m
			}
			m.Count += e.count
			m.Error += e.err
			m.presentFloors += c.floors[i]
		}
		start = end
	}
	for _, m := range merged {
		m.Error += allFloors - m.presentFloors
		out = append(out, m.TopClient)
	}
	return out
}

// largest sorts clients by count, largest first, and keeps n of them.
func largest(clients []messages.TopClient, n int) []messages.TopClient {
	slices.SortFunc(clients, func(a, b messages.TopClient) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.ClientID, b.ClientID))
	})
	if clients == nil {
		clients = []messages.TopClient{}
	}
	return clients[:min(n, len(clients))]
}

// sketch is a space-saving counter (Metwally, Agrawal, El Abbadi 2005):
// at most sketchSize clients; a newcomer when full replaces the client with
// the smallest count and inherits that count as its possible error. Every
// client with more than total/sketchSize requests is kept. The entries
// form a min-heap by count, so both an increment and an eviction take
// O(log sketchSize) steps.
type sketch struct {
	heap  []sketchEntry
	index map[string]int // client id → position in heap
}

type sketchEntry struct {
	id    string
	count uint64
	err   uint64
}

func (s *sketch) init() {
	s.heap = make([]sketchEntry, 0, sketchSize)
	s.index = make(map[string]int, sketchSize)
}

func (s *sketch) reset() {
	s.heap = s.heap[:0]
	clear(s.index)
}

// add counts one request of id. A sketch's memory is taken on its first
// request, so shards and buckets nobody uses cost nothing.
func (s *sketch) add(id string) {
	if s.index == nil {
		s.init()
	}
	if i, ok := s.index[id]; ok {
		s.heap[i].count++
		s.down(i)
		return
	}
	if len(s.heap) < sketchSize {
		s.heap = append(s.heap, sketchEntry{id: id, count: 1})
		s.index[id] = len(s.heap) - 1
		s.up(len(s.heap) - 1)
		return
	}
	smallest := s.heap[0]
	delete(s.index, smallest.id)
	s.heap[0] = sketchEntry{id: id, count: smallest.count + 1, err: smallest.count}
	s.index[id] = 0
	s.down(0)
}

// up and down restore the heap order around i, keeping index current.
// They move a hole rather than swap, so each level costs one index write
// (map writes are most of a sketch update's cost) and an entry that stays
// put costs none.
func (s *sketch) up(i int) {
	e, start := s.heap[i], i
	for i > 0 {
		parent := (i - 1) / 2
		if s.heap[parent].count <= e.count {
			break
		}
		s.move(parent, i)
		i = parent
	}
	s.place(e, i, start)
}

func (s *sketch) down(i int) {
	e, start := s.heap[i], i
	for {
		c := 2*i + 1
		if c >= len(s.heap) {
			break
		}
		if c+1 < len(s.heap) && s.heap[c+1].count < s.heap[c].count {
			c++
		}
		if s.heap[c].count >= e.count {
			break
		}
		s.move(c, i)
		i = c
	}
	s.place(e, i, start)
}

// move puts the entry at from into to.
func (s *sketch) move(from, to int) {
	s.heap[to] = s.heap[from]
	s.index[s.heap[to].id] = to
}

// place puts e at i; its index entry already says start.
func (s *sketch) place(e sketchEntry, i, start int) {
	s.heap[i] = e
	if i != start {
		s.index[e.id] = i
	}
}

// floor is the most a client absent from the sketch can have had: the
// smallest count when the sketch is full, else 0.
func (s *sketch) floor() uint64 {
	if len(s.heap) < sketchSize {
		return 0
	}
	return s.heap[0].count
}
