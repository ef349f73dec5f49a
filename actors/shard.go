package actors

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/tollgate/tollgate/messages"
)

// entry is a cached client: its bucket and bookkeeping. Entries are pooled
// because a busy gateway caches and evicts clients all day.
type entry struct {
	clientID   string
	generation int64 // of the client the bucket belongs to
	version    int64 // of the limits the bucket has
	b          bucket
	seen       int64 // last admission, bucket time; drives time_to_live eviction
	dirty      bool  // changed since the persister last collected it
	// handed is the last_refill (wall Unix ns) of the state the persister
	// collected and has not yet confirmed saved; 0 when none is.
	handed int64
	// lz is the client's lease when the store shares buckets between
	// instances (shard_lease.go); nil with the embedded store.
	lz *leased
}

var entryPool = sync.Pool{New: func() any { return new(entry) }}

func newEntry(c messages.Client, b bucket, now int64) *entry {
	e := entryPool.Get().(*entry)
	*e = entry{clientID: c.ID, generation: c.Generation, version: c.Version, b: b, seen: now}
	return e
}

func freeEntry(e *entry) {
	*e = entry{}
	entryPool.Put(e)
}

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
	// syncMsg brings the key of client, as the store has it now, up to
	// date here: it indexes the key and applies the client's limits, when
	// newer, to the bucket cached, evicted or being loaded under it.
	syncMsg struct {
		client messages.Client
		// moved is the bucket the client had under its previous key (a
		// rotation): it moves to the new key, keeping its tokens.
		moved peekReply
		// fresh caches a full bucket from the row when none is cached (a
		// create made here), so the first request needs no load.
		fresh bool
		reply chan peekReply
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
	// shard's keys and their limits.
	replaceIndexMsg struct {
		refs      []messages.KeyRef
		dropCache bool
		reply     chan struct{}
	}
	// refillTick and sweepTick carry the clock's bucket time for
	// refillAll and sweep. Nobody waits for them.
	refillTick int64
	sweepTick  int64
	// collectMsg hands the persister every changed state since the last
	// collect, and the ids deleted since.
	collectMsg struct {
		reply chan collected
	}
)

// peekReply is a bucket as a shard has it, cached or evicted.
type peekReply struct {
	b          bucket
	cached     bool
	generation int64
	version    int64
	lz         *leased // the lease of a removed bucket, now the caller's
}

type collected struct {
	states  []messages.BucketState
	deleted []string
}

// pendingLoad gathers the requests waiting for one key's store load.
type pendingLoad struct {
	waiters []*admitReq
	updates []messages.Client // admin changes that arrived during the load
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
	// leaseDue holds the leased entries that may need a renewal.
	leaseDue map[messages.KeyHash]struct{}
	// leaseSched holds the leased entries with tokens scheduled ahead:
	// looked at on every collect, so that those nobody asks for go back
	// within a tick, not a full look.
	leaseSched map[messages.KeyHash]struct{}
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
		// Empty and unused without leases.
		leaseDue:   make(map[messages.KeyHash]struct{}),
		leaseSched: make(map[messages.KeyHash]struct{}),
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

func (s *shard) control(m any) {
	switch m := m.(type) {
	case refillTick:
		s.refillAll(int64(m))
	case sweepTick:
		s.sweep(int64(m))
	case *loadDone:
		s.loaded(m)
	case *syncMsg:
		m.reply <- s.sync(m)
	case *markMsg:
		s.touched = make(map[uint64]struct{})
		m.reply <- struct{}{}
	case *replaceIndexMsg:
		s.replaceIndex(m)
		m.reply <- struct{}{}
	case *removeMsg:
		m.reply <- s.remove(m)
	case *peekMsg:
		m.reply <- s.peek(m.hash)
	case *collectMsg:
		m.reply <- s.collect()
	case *savedMsg:
		s.saved(m.states)
		m.reply <- struct{}{}
	case *leaseCollectMsg:
		m.reply <- s.leaseCollect(m)
	case *leaseResultMsg:
		s.leaseResult(m)
		m.reply <- struct{}{}
	case leaseWakeTick:
		s.leaseWake()
	default:
		panic(fmt.Sprintf("actors: shard got unknown message %T", m))
	}
}

// refillAll brings every cached bucket up to now, so that reads and saves
// see current tokens. It does not mark entries dirty: a refill changes the
// stored pair (tokens, last_refill) into an equivalent one.
func (s *shard) refillAll(now int64) {
	for _, e := range s.cache {
		if e.lz == nil { // a lease's view refills in the store's row
			e.b.refill(now)
		}
	}
}
