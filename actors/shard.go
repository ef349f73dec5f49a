package actors

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// entry is a cached client: its bucket and bookkeeping. Entries are pooled
// because a busy gateway caches and evicts clients all day.
type entry struct {
	clientID string
	b        bucket
	seen     int64 // last admission, Unix ns; drives time_to_live eviction
	dirty    bool  // changed since the persister last collected it
	// handed is the last refill (Unix ns) of the state the persister
	// collected and has not yet confirmed saved; 0 when none is.
	handed int64
}

var entryPool = sync.Pool{New: func() any { return new(entry) }}

func newEntry(c messages.Client, b bucket, now int64) *entry {
	e := entryPool.Get().(*entry)
	*e = entry{clientID: c.ID, b: b, seen: now}
	return e
}

func freeEntry(e *entry) {
	*e = entry{}
	entryPool.Put(e)
}

// admitReq asks a shard to admit one request. It carries its own reply
// channel, buffered for the two answers a request may get ("queued", then
// the decision; hence 2, not the usual 1), so the shard never blocks on a
// caller that gave up;
// requests are pooled and go back to the pool only once their last reply
// has been received.
type admitReq struct {
	hash  messages.KeyHash
	now   int64
	reply chan admitReply
}

type admitReply struct {
	d   messages.Decision
	err error
	// load tells the caller it is the first to ask for an indexed but
	// uncached key: it must load the client and report with loadDone.
	load bool
	// queued tells the caller that another request is loading its client:
	// the decision follows when the load is done.
	queued bool
}

func newAdmitReq() any { return &admitReq{reply: make(chan admitReply, 2)} }

// Control messages: admin changes, loads and persistence. Each carries
// what it needs and, where the caller waits, a reply channel of buffer 1.
type (
	// loadDone reports a store load begun by the caller told to load.
	loadDone struct {
		hash   messages.KeyHash
		client messages.Client
		err    error
		loader *admitReq // answered like the waiters
	}
	// installMsg indexes a client and caches its bucket (create, rotate).
	installMsg struct {
		client messages.Client
		b      bucket
		dirty  bool // the bucket carries state not yet saved
		// indexOnly indexes the key without caching a bucket: the first
		// request loads it (a client created on another instance).
		indexOnly bool
		// keepCached leaves an already cached bucket as it is (the echo of
		// this instance's own change, arriving after it).
		keepCached bool
		reply      chan struct{}
	}
	// limitsMsg applies a PATCH to the cached bucket, if any.
	limitsMsg struct {
		hash   messages.KeyHash
		limits messages.Limits
		reply  chan peekReply
	}
	// removeMsg drops a key from the index and the cache (delete, the
	// old key of a rotation) and returns the live bucket, if cached.
	removeMsg struct {
		hash     messages.KeyHash
		clientID string
		deleted  bool // a deleted client leaves a tombstone for the persister
		reply    chan peekReply
	}
	// peekMsg reads the live bucket, if cached.
	peekMsg struct {
		hash  messages.KeyHash
		reply chan peekReply
	}
	// markMsg starts a resync: from now on the shard notes every key it
	// indexes or drops, so the snapshot that follows cannot undo them.
	markMsg struct {
		reply chan struct{}
	}
	// replaceIndexMsg ends a resync with the store's snapshot of this
	// shard's fingerprints.
	replaceIndexMsg struct {
		fps       []uint64
		dropCache bool
		reply     chan struct{}
	}
	// refillTick and sweepTick carry the clock's time (Unix ns) for
	// refillAll and sweep. Nobody waits for them.
	refillTick int64
	sweepTick  int64
	// collectMsg hands the persister every changed state since the last
	// collect, and the ids deleted since.
	collectMsg struct {
		reply chan collected
	}
)

type peekReply struct {
	b      bucket
	cached bool
}

type collected struct {
	states  []messages.BucketState
	deleted []string
}

// pendingLoad gathers the requests waiting for one key's store load.
type pendingLoad struct {
	waiters []*admitReq
	limits  []messages.Limits // PATCHes that arrived during the load
	removed bool              // deleted or rotated away during the load
}

// shard is one limiter actor: it owns the key index and the cached buckets
// of the keys whose fingerprint falls to it.
type shard struct {
	admitc chan *admitReq
	ctlc   chan any
	done   chan struct{}
	cfg    *limiterConfig
	log    *slog.Logger
	// cached mirrors len(cache) for metrics, written only by the loop.
	cached atomic.Int64

	// Owned by the Run goroutine.
	index   map[uint64]struct{} // fingerprints of every stored key of this shard
	cache   map[messages.KeyHash]*entry
	loading map[messages.KeyHash]*pendingLoad
	// evicted holds buckets no longer cached whose state the store may not
	// have yet; a reload resumes from here, not from the store's older row.
	evicted map[messages.KeyHash]*evictedBucket
	deleted []string            // client ids deleted since the last collect
	touched map[uint64]struct{} // during a resync: keys indexed or dropped since its mark
}

func newShard(cfg *limiterConfig, log *slog.Logger) *shard {
	return &shard{
		admitc:  make(chan *admitReq, 64),
		ctlc:    make(chan any, 16),
		done:    make(chan struct{}),
		cfg:     cfg,
		log:     log,
		index:   make(map[uint64]struct{}),
		cache:   make(map[messages.KeyHash]*entry),
		loading: make(map[messages.KeyHash]*pendingLoad),
	}
}

// enqueue puts r on s's admission queue. Once it returns nil, r will be
// answered: by the loop, or with ErrStopped by whoever drains the queue of
// a stopped shard.
func (s *shard) enqueue(ctx context.Context, r *admitReq) error {
	select {
	case s.admitc <- r:
	default:
		select {
		case s.admitc <- r:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return messages.ErrStopped
		}
	}
	// The shard closes done before its last drain. If done is still open,
	// that drain comes after this send and answers r; if it is closed, the
	// drain may be over, so this caller drains: any request it takes gets
	// ErrStopped, and r has been taken by someone who answers it.
	select {
	case <-s.done:
		s.drainStopped()
	default:
	}
	return nil
}

// drainStopped answers every queued admission with ErrStopped. It runs
// after done is closed, in the shard and in late senders.
func (s *shard) drainStopped() {
	for {
		select {
		case r := <-s.admitc:
			r.reply <- admitReply{err: messages.ErrStopped}
		default:
			return
		}
	}
}

// run is the shard's loop. It returns nil when ctx is cancelled; requests
// still queued then get ErrStopped, and callers waiting for a load get it
// through done.
func (s *shard) run(ctx context.Context) error {
	defer s.drainStopped()
	defer close(s.done)
	// Ticks arrive as control messages from the Limiter's clock: a timer
	// channel in this select would cost timer bookkeeping on every wait.
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-s.admitc:
			s.admit(r)
			s.drainAdmits()
		case m := <-s.ctlc:
			s.control(m)
		}
	}
}

// drainAdmits answers the admissions already queued without going back
// through the loop's select, whose cost under load would otherwise be paid
// once per request. It is bounded so ticks and control messages still get
// their turn.
func (s *shard) drainAdmits() {
	for range cap(s.admitc) {
		select {
		case r := <-s.admitc:
			s.admit(r)
		default:
			return
		}
	}
}

func (s *shard) admit(r *admitReq) {
	if e, ok := s.cache[r.hash]; ok {
		r.reply <- s.take(e, r.now)
		return
	}
	if _, ok := s.index[r.hash.Fingerprint()]; !ok {
		r.reply <- admitReply{err: messages.ErrUnknownKey}
		return
	}
	if p, ok := s.loading[r.hash]; ok {
		p.waiters = append(p.waiters, r)
		r.reply <- admitReply{queued: true}
		return
	}
	s.loading[r.hash] = &pendingLoad{}
	r.reply <- admitReply{load: true}
}

func (s *shard) take(e *entry, now int64) admitReply {
	ok := e.b.take(now)
	if ok {
		e.dirty = true
	}
	e.seen = max(e.seen, now)
	d := e.b.decision(ok)
	d.ClientID = e.clientID
	return admitReply{d: d}
}

func (s *shard) control(m any) {
	switch m := m.(type) {
	case refillTick:
		s.refillAll(int64(m))
	case sweepTick:
		s.sweep(int64(m))
	case *loadDone:
		s.loaded(m)
	case *installMsg:
		s.installMsg(m)
		m.reply <- struct{}{}
	case *markMsg:
		s.touched = make(map[uint64]struct{})
		m.reply <- struct{}{}
	case *replaceIndexMsg:
		s.replaceIndex(m)
		m.reply <- struct{}{}
	case *limitsMsg:
		s.setLimits(m)
	case *removeMsg:
		m.reply <- s.remove(m)
	case *peekMsg:
		var rep peekReply
		if e, ok := s.cache[m.hash]; ok {
			e.b.refill(time.Now().UnixNano())
			rep = peekReply{b: e.b, cached: true}
		} else if ev, ok := s.evicted[m.hash]; ok {
			ev.b.refill(time.Now().UnixNano())
			rep = peekReply{b: ev.b, cached: true}
		}
		m.reply <- rep
	case *collectMsg:
		m.reply <- s.collect()
	case *savedMsg:
		s.saved(m.states)
		m.reply <- struct{}{}
	default:
		panic(fmt.Sprintf("actors: shard got unknown message %T", m))
	}
}

// loaded finishes a store load: the client is cached, then the loader and
// every waiter are admitted in the order they arrived.
func (s *shard) loaded(m *loadDone) {
	p := s.loading[m.hash]
	delete(s.loading, m.hash)
	if p == nil { // cannot happen: one load per pending entry
		p = &pendingLoad{}
	}
	waiters := append([]*admitReq{m.loader}, p.waiters...)
	err := m.err
	if err == nil && (p.removed || m.client.KeyHash != m.hash) {
		err = messages.ErrUnknownKey
	}
	if err == nil {
		_, indexed := s.index[m.hash.Fingerprint()]
		if !indexed {
			err = messages.ErrUnknownKey
		}
	}
	if err != nil {
		for _, w := range waiters {
			w.reply <- admitReply{err: err}
		}
		return
	}
	now := time.Now().UnixNano()
	c := m.client
	ev := s.unevict(c.KeyHash, c.ID)
	if ev != nil {
		// Evicted here, perhaps not saved yet: its state is the newer.
		c.Tokens, c.LastRefill = ev.b.tokens, time.Unix(0, ev.b.last)
	}
	b := newBucket(c)
	for _, l := range p.limits {
		b.setLimits(now, l)
	}
	e := s.install(c, b, now)
	if ev != nil {
		e.dirty, e.handed = ev.dirty, ev.handed
	}
	for _, w := range waiters {
		w.reply <- s.take(e, w.now)
	}
}

func (s *shard) installMsg(m *installMsg) {
	if m.indexOnly {
		s.indexKey(m.client.KeyHash.Fingerprint())
		return
	}
	if _, ok := s.cache[m.client.KeyHash]; ok && m.keepCached {
		return
	}
	e := s.install(m.client, m.b, time.Now().UnixNano())
	e.dirty = m.dirty
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
func (s *shard) replaceIndex(m *replaceIndexMsg) {
	index := make(map[uint64]struct{}, len(m.fps))
	for _, fp := range m.fps {
		index[fp] = struct{}{}
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
		if _, ok := s.index[h.Fingerprint()]; ok && !m.dropCache {
			continue
		}
		s.evict(h, e)
	}
	s.cached.Store(int64(len(s.cache)))
}

func (s *shard) install(c messages.Client, b bucket, now int64) *entry {
	s.indexKey(c.KeyHash.Fingerprint())
	if old, ok := s.cache[c.KeyHash]; ok {
		freeEntry(old)
	}
	e := newEntry(c, b, now)
	s.cache[c.KeyHash] = e
	s.cached.Store(int64(len(s.cache)))
	return e
}

func (s *shard) setLimits(m *limitsMsg) {
	var rep peekReply
	if e, ok := s.cache[m.hash]; ok {
		e.b.setLimits(time.Now().UnixNano(), m.limits)
		e.dirty = true
		rep = peekReply{b: e.b, cached: true}
	} else if ev, ok := s.evicted[m.hash]; ok {
		ev.b.setLimits(time.Now().UnixNano(), m.limits)
		ev.dirty = true
		rep = peekReply{b: ev.b, cached: true}
	} else if p, ok := s.loading[m.hash]; ok {
		p.limits = append(p.limits, m.limits)
	}
	m.reply <- rep
}

func (s *shard) remove(m *removeMsg) peekReply {
	s.unindexKey(m.hash.Fingerprint())
	if p, ok := s.loading[m.hash]; ok {
		p.removed = true
	}
	ev := s.unevict(m.hash, m.clientID)
	if m.deleted {
		s.deleted = append(s.deleted, m.clientID)
	}
	e, ok := s.cache[m.hash]
	if !ok {
		if ev == nil || m.deleted {
			return peekReply{}
		}
		// A rotation moves the unsaved state of an evicted bucket too.
		ev.b.refill(time.Now().UnixNano())
		return peekReply{b: ev.b, cached: true}
	}
	delete(s.cache, m.hash)
	s.cached.Store(int64(len(s.cache)))
	e.b.refill(time.Now().UnixNano())
	rep := peekReply{b: e.b, cached: true}
	freeEntry(e)
	return rep
}

// refillAll brings every cached bucket up to now, so that reads and saves
// see current tokens. It does not mark entries dirty: a refill changes the
// stored pair (tokens, last_refill) into an equivalent one.
func (s *shard) refillAll(now int64) {
	for _, e := range s.cache {
		e.b.refill(now)
	}
}
