// Package actors holds Tollgate's long-lived goroutines: the limiter shards
// that own the token buckets and the key index, the persister that saves
// bucket states in batches, and the backend registry with its health-check
// workers. Each owns its state and is reached only through typed
// request/reply messages behind synchronous methods; each Run returns nil
// when its context is cancelled, after which callers get
// messages.ErrStopped.
package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// LimiterConfig sets up a Limiter. Zero values take the defaults noted.
type LimiterConfig struct {
	// Shards is the number of shard actors (default 4 × GOMAXPROCS).
	Shards              int
	AddTokensInterval   time.Duration // default 5s
	RemoveStaleInterval time.Duration // default 300s
	CacheTTL            time.Duration // default 300s
	// LoadTimeout bounds a first request's store load (default 2s), so an
	// unreachable store answers "unavailable" instead of hanging.
	LoadTimeout time.Duration
	// HashAPIKeys keeps only the SHA-256 of keys in the store.
	HashAPIKeys bool
	// Shared, when set, shares buckets with other instances through
	// leases; the Leaser (NewLeaser) must run beside the Limiter.
	Shared *SharedBuckets
}

type limiterConfig struct {
	clk                 clock
	addTokensInterval   time.Duration
	removeStaleInterval time.Duration
	cacheTTL            time.Duration
	loadTimeout         time.Duration
	hashAPIKeys         bool
	// lease is set when the store shares buckets between instances.
	lease *leaseShared
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Limiter admits requests against per-client token buckets and applies
// admin changes to clients: writes go to the store first, then to the
// shard that caches the client. Its methods are safe for concurrent use
// and need Run to be running.
type Limiter struct {
	shards []*shard
	order  adminOrder
	// reqs pools admission requests with their reply channels. It is per
	// Limiter, not global, so a channel never crosses into another
	// Limiter's world (a synctest bubble, in tests).
	reqs  sync.Pool
	store persist.Store
	cfg   limiterConfig
	log   *slog.Logger
	// shared is set with shared buckets (leases).
	shared *SharedBuckets
}

// NewLimiter loads the key index from the store and returns a Limiter
// ready to Run.
func NewLimiter(ctx context.Context, cfg LimiterConfig, store persist.Store, log *slog.Logger) (*Limiter, error) {
	n := cfg.Shards
	if n <= 0 {
		n = 4 * runtime.GOMAXPROCS(0)
	}
	l := &Limiter{
		store: store,
		log:   log.With("actor", "limiter"),
		cfg: limiterConfig{
			clk:                 newClock(),
			addTokensInterval:   orDefault(cfg.AddTokensInterval, 5*time.Second),
			removeStaleInterval: orDefault(cfg.RemoveStaleInterval, 300*time.Second),
			cacheTTL:            orDefault(cfg.CacheTTL, 300*time.Second),
			loadTimeout:         orDefault(cfg.LoadTimeout, 2*time.Second),
			hashAPIKeys:         cfg.HashAPIKeys,
		},
	}
	l.reqs.New = newAdmitReq
	l.order = newAdminOrder()
	if cfg.Shared != nil {
		l.shared, l.cfg.lease = cfg.Shared, newLeaseShared(cfg.Shared)
	}
	for range n {
		l.shards = append(l.shards, newShard(&l.cfg, l.log))
	}
	refs, err := store.KeyRefs(ctx)
	if err != nil {
		return nil, fmt.Errorf("actors: load key index: %w", err)
	}
	// The shards do not run yet, so filling their maps here is safe: the
	// go statements in Run happen after.
	for _, r := range refs {
		l.shardFor(r.KeyHash).index[r.KeyHash.Fingerprint()] = struct{}{}
	}
	l.log.Info("key index loaded", "clients", len(refs), "shards", n)
	return l, nil
}

// Run runs the shard actors until ctx is cancelled. It returns nil then,
// or the first shard failure.
func (l *Limiter) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { l.clock(ctx); return nil })
	for _, s := range l.shards {
		// Each shard selects on its own done channel: every shard's loop
		// locking one shared ctx.Done channel per message was the main
		// lock contention under load.
		sctx, cancel := context.WithCancel(ctx)
		g.Go(func() error {
			defer cancel()
			return s.run(sctx)
		})
	}
	return g.Wait()
}

// clock sends every shard its refill and sweep ticks until ctx ends: one
// goroutine for all shards, touching no state, instead of two tickers in
// each shard's select, whose timer channels cost bookkeeping on every
// wait of the hottest loop in the process. A shard whose control queue is
// full misses a tick rather than delaying the others: both are catch-up
// work that the next tick does as well.
func (l *Limiter) clock(ctx context.Context) {
	refill := time.NewTicker(l.cfg.addTokensInterval)
	defer refill.Stop()
	sweep := time.NewTicker(l.cfg.removeStaleInterval)
	defer sweep.Stop()
	for {
		var tick any
		select {
		case <-ctx.Done():
			return
		case t := <-refill.C:
			tick = refillTick(l.cfg.clk.at(t))
		case t := <-sweep.C:
			tick = sweepTick(l.cfg.clk.at(t))
		}
		for _, s := range l.shards {
			select {
			case s.ctlc <- tick:
			default:
			}
		}
	}
}

// CachedClients is how many clients are cached now, for metrics. It reads
// counters the shards publish and needs no round trip.
func (l *Limiter) CachedClients() int {
	n := int64(0)
	for _, s := range l.shards {
		n += s.cached.Load()
	}
	return int(n)
}

func (l *Limiter) shardFor(h messages.KeyHash) *shard {
	return l.shards[h.Fingerprint()%uint64(len(l.shards))]
}

// Admit takes one token from the bucket of the client owning apiKey. A
// refused request is not an error: it has Decision.Allowed false. Errors:
// messages.ErrUnknownKey, messages.ErrUnavailable (the client had to be
// loaded and the store failed), messages.ErrStopped, or ctx's error, in
// which case no token was taken.
//
// The common path is a send that finds room in the shard's queue and a
// wait for the answer that watches ctx but not the shard's done channel:
// the shard answers every request it dequeues at once and drains its
// queue with ErrStopped when it stops (see admitReq for the invariants).
func (l *Limiter) Admit(ctx context.Context, apiKey string) (messages.Decision, error) {
	if err := ctx.Err(); err != nil {
		return messages.Decision{}, err
	}
	h := messages.HashKey(apiKey)
	s := l.shardFor(h)
	r := l.reqs.Get().(*admitReq)
	r.hash, r.now = h, l.cfg.clk.now()
	r.state.Store(reqWaiting)
	if err := s.enqueue(ctx, r); err != nil {
		l.reqs.Put(r)
		return messages.Decision{}, err
	}
	var rep admitReply
	if done := ctx.Done(); done == nil {
		rep = <-r.reply // nothing to watch: a plain receive is cheaper
	} else {
		select {
		case rep = <-r.reply:
		case <-done:
			if r.abandon() {
				return messages.Decision{}, ctx.Err() // r stays with the shard
			}
			rep = <-r.reply // the shard took it: its answer is on the way
		}
	}
	var err error
	switch {
	case rep.load:
		if !l.load(ctx, s, r) {
			return messages.Decision{}, ctx.Err() // r stays with the shard
		}
		rep, err = l.await(ctx, s, r)
	case rep.queued:
		rep, err = l.await(ctx, s, r)
	}
	if err != nil {
		// r may still get a reply: it must not be reused.
		return messages.Decision{}, err
	}
	l.reqs.Put(r)
	return rep.d, rep.err
}

// await waits for the answer to a request queued behind a store load. A
// caller that gives up first takes no token.
func (l *Limiter) await(ctx context.Context, s *shard, r *admitReq) (admitReply, error) {
	select {
	case rep := <-r.reply:
		return rep, nil
	case <-ctx.Done():
		if r.abandon() {
			return admitReply{}, ctx.Err()
		}
	case <-s.done:
		// The shard answers its queue when it stops, not its loads.
		if r.abandon() {
			return admitReply{}, messages.ErrStopped
		}
	}
	return <-r.reply, nil // taken: the answer is on the way
}

// load fetches the client of r's key from the store, outside the shard's
// loop, and hands the result to the shard, which answers r and every
// request that queued behind it. The load does not follow the caller's
// cancellation: others may be waiting on it. It is bounded by LoadTimeout.
// It reports false when the caller gave up meanwhile: r is then abandoned
// (the shard serves the waiters and gives r no token) and must not be
// awaited.
func (l *Limiter) load(ctx context.Context, s *shard, r *admitReq) bool {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.loadTimeout)
	defer cancel()
	c, err := l.store.GetClientByKey(lctx, r.hash)
	switch {
	case err == nil:
	case errors.Is(err, messages.ErrNotFound):
		err = messages.ErrUnknownKey
	case !errors.Is(err, messages.ErrUnavailable):
		err = fmt.Errorf("%w: %w", messages.ErrUnavailable, err)
	case l.cfg.lease != nil:
		// The store is unreachable: leased buckets follow the store-down
		// policy now, rather than each wait for a renewal of its own to
		// fail. The next renewal that goes through clears it.
		l.cfg.lease.down.Store(true)
	}
	// r was handed over taken (see shard.admit); from here its caller may
	// give up on it like any waiter.
	r.release()
	quit := ctx.Err() != nil && r.abandon()
	select {
	case s.ctlc <- &loadDone{hash: r.hash, client: c, err: err, loader: r}:
	case <-s.done:
	}
	return !quit
}

// ask sends msg to s and waits for its reply on reply.
func ask[R any](ctx context.Context, s *shard, msg any, reply chan R) (R, error) {
	return call(ctx, s.done, s.ctlc, msg, reply)
}
