package actors

import (
	"github.com/tollgate/tollgate/messages"
)

// A bucket's state reaches the store in two steps: the persister collects
// it, then saves it. Until the save is confirmed (savedMsg) the shard keeps
// what it handed over, cached or evicted, so that a reload never resumes
// from a store row older than what this instance has admitted against.

// evictedBucket is a bucket no longer cached whose state the store may not
// have yet.
type evictedBucket struct {
	clientID   string
	generation int64
	version    int64
	b          bucket
	dirty      bool  // changed since the persister last collected it
	handed     int64 // as entry.handed
}

// savedMsg confirms that the persister saved states.
type savedMsg struct {
	states []messages.BucketState
	reply  chan struct{}
}

// evict drops a cached entry, keeping its bucket if the store may not have
// its state yet.
func (s *shard) evict(h messages.KeyHash, e *entry) {
	if e.lz == nil && (e.dirty || e.handed != 0) {
		if s.evicted == nil {
			s.evicted = make(map[messages.KeyHash]*evictedBucket)
		}
		s.evicted[h] = &evictedBucket{clientID: e.clientID, generation: e.generation, version: e.version,
			b: e.b, dirty: e.dirty, handed: e.handed}
	}
	delete(s.cache, h)
	dropLeased(e)
	freeEntry(e)
}

// unevict takes the evicted bucket of h out of the evicted set, if it
// belongs to clientID.
func (s *shard) unevict(h messages.KeyHash, clientID string) *evictedBucket {
	ev, ok := s.evicted[h]
	if !ok || ev.clientID != clientID {
		return nil
	}
	delete(s.evicted, h)
	return ev
}

// sweep evicts entries idle for time_to_live.
func (s *shard) sweep(now int64) {
	ttl := int64(s.cfg.cacheTTL)
	for h, e := range s.cache {
		if now-e.seen >= ttl && !leaseBusy(e) {
			s.evict(h, e)
		}
	}
	s.cached.Store(int64(len(s.cache)))
}

// collect hands over every state changed since the last collect, cached or
// evicted, and the ids deleted since.
func (s *shard) collect() collected {
	c := collected{deleted: s.deleted}
	s.deleted = nil
	for h, e := range s.cache {
		// A leased bucket lives in the store's row: saving the
		// instance's view of it would mint tokens.
		if e.dirty && e.lz == nil {
			st := s.stateOf(h, e.clientID, e.generation, &e.b)
			c.states = append(c.states, st)
			e.dirty, e.handed = false, st.LastRefill.UnixNano()
		}
	}
	for h, ev := range s.evicted {
		if ev.dirty {
			st := s.stateOf(h, ev.clientID, ev.generation, &ev.b)
			c.states = append(c.states, st)
			ev.dirty, ev.handed = false, st.LastRefill.UnixNano()
		}
	}
	return c
}

// saved forgets what the store now has: an evicted bucket saved as of its
// last change is gone for good; a cached one no longer needs keeping.
func (s *shard) saved(states []messages.BucketState) {
	for _, st := range states {
		at := st.LastRefill.UnixNano()
		if e, ok := s.cache[st.KeyHash]; ok && e.clientID == st.ClientID && e.generation == st.Generation &&
			e.handed != 0 && e.handed <= at {
			e.handed = 0
		}
		if ev, ok := s.evicted[st.KeyHash]; ok && ev.clientID == st.ClientID && ev.generation == st.Generation &&
			!ev.dirty && ev.handed <= at {
			delete(s.evicted, st.KeyHash)
		}
	}
}

func (s *shard) stateOf(h messages.KeyHash, clientID string, generation int64, b *bucket) messages.BucketState {
	st := s.cfg.clk.state(clientID, b)
	st.KeyHash, st.Generation = h, generation
	return st
}
