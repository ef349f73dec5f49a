package actors

import (
	"github.com/tollgate/tollgate/messages"
)

// Admin changes reach a shard as the store's rows (syncMsg) or as keys to
// drop (removeMsg). The Limiter sends them in the order the store
// committed them (adminOrder); a row also carries its version, so limits
// that a resync or a load brings in out of turn never replace newer ones.

// applyLimits gives b the limits of c when c's version is newer than
// *version: refilled at the old rate up to now first, tokens clamped to
// the new capacity. It reports whether it changed anything.
func applyLimits(b *bucket, version *int64, c messages.Client, now int64) bool {
	if c.Version <= *version {
		return false
	}
	rate, capacity := c.RatePerSec, c.Capacity
	b.setLimits(now, messages.Limits{RatePerSec: &rate, Capacity: &capacity})
	*version = c.Version
	return true
}

// sync indexes m.client's key and brings what this shard holds of it up to
// date; it returns the live bucket, if any.
func (s *shard) sync(m *syncMsg) peekReply {
	c := m.client
	now := s.cfg.clk.now()
	s.indexKey(c.KeyHash.Fingerprint())
	e, ok := s.cache[c.KeyHash]
	if ok && (e.clientID != c.ID || e.generation != c.Generation) {
		// The key belonged to a client since deleted: its state is void.
		s.drop(c.KeyHash, e)
		ok = false
	}
	switch {
	case m.moved.cached && m.moved.generation == c.Generation:
		// The bucket moves with the client's key; it is this instance's
		// latest state, so it wins over one loaded under the new key.
		b, version := m.moved.b, m.moved.version
		applyLimits(&b, &version, c, now)
		e = s.install(c, b, now)
		e.version, e.dirty = version, true
		adoptLease(e, m.moved.lz)
		shrinkLease(e)
	case ok:
		if applyLimits(&e.b, &e.version, c, now) {
			e.dirty = true
			shrinkLease(e)
		}
	default:
		return s.syncUncached(c, m.fresh, now)
	}
	return peekReply{b: e.b, cached: true, generation: e.generation, version: e.version}
}

// syncUncached is sync for a key with no cached bucket.
func (s *shard) syncUncached(c messages.Client, fresh bool, now int64) peekReply {
	if ev, ok := s.evicted[c.KeyHash]; ok && ev.clientID == c.ID && ev.generation == c.Generation {
		if applyLimits(&ev.b, &ev.version, c, now) {
			ev.dirty = true
		}
		return peekReply{b: ev.b, cached: true, generation: ev.generation, version: ev.version}
	}
	if p, ok := s.loading[c.KeyHash]; ok {
		p.updates = append(p.updates, c)
	}
	if !fresh {
		return peekReply{}
	}
	e := s.install(c, s.cfg.clk.bucket(c, now), now)
	return peekReply{b: e.b, cached: true, generation: e.generation, version: e.version}
}

// remove drops a key from the index and the cache and returns its live
// bucket, cached or evicted. A key cached for another client (reused
// since) is left alone.
func (s *shard) remove(m *removeMsg) peekReply {
	e, cached := s.cache[m.hash]
	if cached && e.clientID != m.clientID {
		return peekReply{}
	}
	s.unindexKey(m.hash.Fingerprint())
	if p, ok := s.loading[m.hash]; ok {
		p.removed = true
	}
	ev := s.unevict(m.hash, m.clientID)
	if m.deleted {
		s.deleted = append(s.deleted, m.clientID)
	}
	now := s.cfg.clk.now()
	if !cached {
		if ev == nil || m.deleted {
			return peekReply{}
		}
		// A rotation moves the unsaved state of an evicted bucket too.
		ev.b.refill(now)
		return peekReply{b: ev.b, cached: true, generation: ev.generation, version: ev.version}
	}
	e.b.refill(now)
	rep := peekReply{b: e.b, cached: true, generation: e.generation, version: e.version}
	dropLeased(e)
	rep.lz = detachLease(e)
	s.drop(m.hash, e)
	return rep
}

// peek returns the live bucket of h, cached or evicted, brought up to now.
func (s *shard) peek(h messages.KeyHash) peekReply {
	now := s.cfg.clk.now()
	if e, ok := s.cache[h]; ok {
		e.b.refill(now)
		return peekReply{b: e.b, cached: true, generation: e.generation, version: e.version}
	}
	if ev, ok := s.evicted[h]; ok {
		ev.b.refill(now)
		return peekReply{b: ev.b, cached: true, generation: ev.generation, version: ev.version}
	}
	return peekReply{}
}

func (s *shard) indexKey(fp uint64) {
	s.index[fp] = struct{}{}
	if s.touched != nil {
		s.touched[fp] = struct{}{}
	}
}

func (s *shard) unindexKey(fp uint64) {
	delete(s.index, fp)
	if s.touched != nil {
		s.touched[fp] = struct{}{}
	}
}

// replaceIndex takes the store's snapshot as the index, except for keys
// this shard indexed or dropped since the mark: those it knows better.
// Cached buckets take the snapshot's limits when they are newer (a change
// whose notification was missed); a bucket whose key left the index, or
// now belongs to another client, is evicted.
func (s *shard) replaceIndex(m *replaceIndexMsg) {
	now := s.cfg.clk.now()
	index := make(map[uint64]struct{}, len(m.refs))
	for _, r := range m.refs {
		index[r.KeyHash.Fingerprint()] = struct{}{}
		e, ok := s.cache[r.KeyHash]
		if !ok {
			continue
		}
		if e.clientID != r.ClientID || e.generation != r.Generation {
			s.evict(r.KeyHash, e)
			continue
		}
		c := messages.Client{RatePerSec: r.RatePerSec, Capacity: r.Capacity, Version: r.Version}
		if applyLimits(&e.b, &e.version, c, now) {
			e.dirty = true
		}
	}
	for fp := range s.touched {
		if _, ok := s.index[fp]; ok {
			index[fp] = struct{}{}
		} else {
			delete(index, fp)
		}
	}
	s.index, s.touched = index, nil
	// A cached client whose key left the index was deleted or rotated on
	// another instance while we were not listening.
	for h, e := range s.cache {
		// A leased entry need not reload to pick up missed limits (every
		// renewal brings them), and dropping it would lose its lease.
		if _, ok := s.index[h.Fingerprint()]; ok && (!m.dropCache || e.lz != nil) {
			continue
		}
		s.evict(h, e)
	}
	s.cached.Store(int64(len(s.cache)))
}

func (s *shard) install(c messages.Client, b bucket, now int64) *entry {
	s.indexKey(c.KeyHash.Fingerprint())
	if old, ok := s.cache[c.KeyHash]; ok {
		dropLeased(old)
		freeEntry(old)
	}
	e := newEntry(c, b, now)
	s.newLeased(e)
	s.cache[c.KeyHash] = e
	s.cached.Store(int64(len(s.cache)))
	return e
}

// drop removes a cached entry without keeping its state.
func (s *shard) drop(h messages.KeyHash, e *entry) {
	delete(s.cache, h)
	s.cached.Store(int64(len(s.cache)))
	dropLeased(e)
	freeEntry(e)
}
