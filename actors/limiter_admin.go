package actors

import (
	"context"
	"hash/maphash"
	"math"
	"math/rand/v2"

	"github.com/tollgate/tollgate/messages"
)

// The admin methods write to the store first and tell the shards after,
// so a failed write (messages.ErrUnavailable, ErrConflict, ErrNotFound)
// changes nothing. Each holds its client's place in adminOrder from before
// the write until the shards have the change, so two changes to one client
// reach the shards in the order the store committed them. Once the store
// has a change, the shards are told even if the caller has gone away, and
// the change is reported as made even if the shards have stopped (the
// process is stopping: its cache goes with it).

// adminOrder serialises admin changes per client: a change holds the
// stripe of its client id across the store write and the shard update.
// Changes notified by other instances take the same stripe. Admin writes
// are rare, so a stripe shared by a few clients costs nothing. A stripe is
// a channel of buffer 1 rather than a mutex so that tests in synctest
// bubbles see a waiting change as durably blocked.
type adminOrder struct {
	seed    maphash.Seed
	stripes [64]chan struct{}
}

func newAdminOrder() adminOrder {
	o := adminOrder{seed: maphash.MakeSeed()}
	for i := range o.stripes {
		o.stripes[i] = make(chan struct{}, 1)
	}
	return o
}

// lock takes id's stripe and returns its unlock, or ctx's error when ctx
// ends first (a write queued behind a slow one on the same stripe can
// still be cancelled; nothing has changed then).
func (o *adminOrder) lock(ctx context.Context, id string) (func(), error) {
	c := o.stripes[maphash.String(o.seed, id)%uint64(len(o.stripes))]
	select {
	case c <- struct{}{}:
		return func() { <-c }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// tell sends an admin change to s after the store committed it and returns
// the shard's reply; a stopped shard is no error (see above).
func tell[R any](ctx context.Context, s *shard, msg any, reply chan R) R {
	rep, _ := ask(context.WithoutCancel(ctx), s, msg, reply)
	return rep
}

// newGeneration picks a client's generation: random, so instances sharing
// a store need not coordinate, and never 0, the generation of clients
// stored before generations existed.
func newGeneration() int64 { return rand.Int64N(math.MaxInt64) + 1 }

// CreateClient stores c and indexes its key, caching a full bucket so its
// first request needs no load. With HashAPIKeys the store gets no clear
// key; the returned client still carries it, for the one answer that
// shows it.
func (l *Limiter) CreateClient(ctx context.Context, c messages.Client) (messages.Client, error) {
	c.Generation, c.Version = newGeneration(), 1
	stored := l.atRest(c)
	unlock, err := l.order.lock(ctx, c.ID)
	if err != nil {
		return messages.Client{}, err
	}
	defer unlock()
	if err := l.store.CreateClient(ctx, stored); err != nil {
		return messages.Client{}, err
	}
	reply := make(chan peekReply, 1)
	tell(ctx, l.shardFor(c.KeyHash), &syncMsg{client: stored, fresh: true, reply: reply}, reply)
	return c, nil
}

// GetClient returns the client with its bucket as of now.
func (l *Limiter) GetClient(ctx context.Context, id string) (messages.Client, error) {
	c, err := l.store.GetClient(ctx, id)
	if err != nil {
		return messages.Client{}, err
	}
	if l.shared != nil {
		cs := []messages.Client{l.shown(c)}
		return cs[0], l.overlayShared(ctx, cs)
	}
	return l.live(ctx, c)
}

// ListClients returns a page of clients ordered by id, buckets as of now.
func (l *Limiter) ListClients(ctx context.Context, after string, limit int) ([]messages.Client, error) {
	cs, err := l.store.ListClients(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	if l.shared != nil {
		for i := range cs {
			cs[i] = l.shown(cs[i])
		}
		return cs, l.overlayShared(ctx, cs)
	}
	for i := range cs {
		if cs[i], err = l.live(ctx, cs[i]); err != nil {
			return nil, err
		}
	}
	return cs, nil
}

// UpdateLimits changes a client's rate and/or capacity, live: the bucket,
// cached or not, refills at the old rate up to now, then takes the new
// limits, its tokens clamped to the new capacity.
func (l *Limiter) UpdateLimits(ctx context.Context, id string, lim messages.Limits) (messages.Client, error) {
	unlock, err := l.order.lock(ctx, id)
	if err != nil {
		return messages.Client{}, err
	}
	defer unlock()
	lim.At = l.cfg.clk.toWall(l.cfg.clk.now())
	c, err := l.store.UpdateLimits(ctx, id, lim)
	if err != nil {
		return messages.Client{}, err
	}
	reply := make(chan peekReply, 1)
	rep := tell(ctx, l.shardFor(c.KeyHash), &syncMsg{client: c, reply: reply}, reply)
	cs := []messages.Client{l.shown(l.withBucket(c, rep))}
	// The change is stored: a failed read of the tokens must not make it
	// look failed, so the answer keeps the cached view then.
	_ = l.overlayShared(ctx, cs)
	return cs[0], nil
}

// DeleteClient removes a client; its key is refused from the next request
// on, and its bucket is never written back.
func (l *Limiter) DeleteClient(ctx context.Context, id string) error {
	unlock, err := l.order.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	c, err := l.store.DeleteClient(ctx, id)
	if err != nil {
		return err
	}
	reply := make(chan peekReply, 1)
	tell(ctx, l.shardFor(c.KeyHash), &removeMsg{hash: c.KeyHash, clientID: c.ID, deleted: true, reply: reply}, reply)
	return nil
}

// RotateKey gives a client newKey. The old key is refused from the next
// request on; the bucket carries over to the new key. The returned client
// carries newKey in clear.
func (l *Limiter) RotateKey(ctx context.Context, id, newKey string) (messages.Client, error) {
	next := messages.Client{APIKey: newKey, KeyHash: messages.HashKey(newKey), KeyPrefix: messages.KeyPrefix(newKey)}
	stored := l.atRest(next)
	unlock, err := l.order.lock(ctx, id)
	if err != nil {
		return messages.Client{}, err
	}
	defer unlock()
	old, err := l.store.RotateKey(ctx, id, stored.APIKey, stored.KeyHash, stored.KeyPrefix)
	if err != nil {
		return messages.Client{}, err
	}
	c := old
	c.APIKey, c.KeyHash, c.KeyPrefix = stored.APIKey, stored.KeyHash, stored.KeyPrefix
	c.Version = old.Version + 1
	removed := make(chan peekReply, 1)
	moved := tell(ctx, l.shardFor(old.KeyHash), &removeMsg{hash: old.KeyHash, clientID: old.ID, reply: removed}, removed)
	reply := make(chan peekReply, 1)
	rep := tell(ctx, l.shardFor(c.KeyHash), &syncMsg{client: c, moved: moved, fresh: true, reply: reply}, reply)
	cs := []messages.Client{l.withBucket(c, rep)}
	_ = l.overlayShared(ctx, cs) // as in UpdateLimits
	cs[0].APIKey = newKey
	return cs[0], nil
}

// Ready reports whether the store answers.
func (l *Limiter) Ready(ctx context.Context) error { return l.store.Ping(ctx) }

// live overlays the shard's bucket, when the client is cached, on the
// stored client, and brings the tokens up to now.
func (l *Limiter) live(ctx context.Context, c messages.Client) (messages.Client, error) {
	reply := make(chan peekReply, 1)
	rep, err := ask(ctx, l.shardFor(c.KeyHash), &peekMsg{hash: c.KeyHash, reply: reply}, reply)
	if err != nil {
		return messages.Client{}, err
	}
	return l.shown(l.withBucket(c, rep)), nil
}

// withBucket returns c with the live bucket of rep, when it is of c's
// generation, or else its stored bucket, refilled to now.
func (l *Limiter) withBucket(c messages.Client, rep peekReply) messages.Client {
	now := l.cfg.clk.now()
	b := rep.b
	if !rep.cached || rep.generation != c.Generation {
		b = l.cfg.clk.bucket(c, now)
	}
	b.refill(now)
	st := l.cfg.clk.state(c.ID, &b)
	c.RatePerSec, c.Capacity, c.Tokens, c.LastRefill = b.rate, b.capacity, st.Tokens, st.LastRefill
	return c
}

// shown is c as admin answers other than create and rotate-key show it:
// with HashAPIKeys, never with its key in clear, whatever the store holds
// (SPEC 4); the answer then carries the key's prefix.
func (l *Limiter) shown(c messages.Client) messages.Client {
	if l.cfg.hashAPIKeys {
		c.APIKey = ""
	}
	return c
}

// atRest is c as the store keeps it: without the clear key when keys are
// hashed at rest.
func (l *Limiter) atRest(c messages.Client) messages.Client {
	if c.KeyPrefix == "" {
		c.KeyPrefix = messages.KeyPrefix(c.APIKey)
	}
	if l.cfg.hashAPIKeys {
		c.APIKey = ""
	}
	return c
}

// Collect hands over every bucket state changed since the last Collect,
// and the ids of clients deleted since, from every shard. The persister
// calls it; it is the only way states leave the shards. On error it still
// returns what the shards before the failing one handed over.
func (l *Limiter) Collect(ctx context.Context) (states []messages.BucketState, deleted []string, err error) {
	for _, s := range l.shards {
		reply := make(chan collected, 1)
		c, err := ask(ctx, s, &collectMsg{reply: reply}, reply)
		if err != nil {
			return states, deleted, err
		}
		states = append(states, c.states...)
		deleted = append(deleted, c.deleted...)
	}
	return states, deleted, nil
}

// Saved tells the shards that the store now has states, so they stop
// keeping them for reloads. The persister calls it after each successful
// save.
func (l *Limiter) Saved(ctx context.Context, states []messages.BucketState) error {
	byShard := make(map[*shard][]messages.BucketState)
	for _, st := range states {
		s := l.shardFor(st.KeyHash)
		byShard[s] = append(byShard[s], st)
	}
	for s, sts := range byShard {
		reply := make(chan struct{}, 1)
		if _, err := ask(ctx, s, &savedMsg{states: sts, reply: reply}, reply); err != nil {
			return err
		}
	}
	return nil
}
