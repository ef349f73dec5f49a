package actors

import (
	"context"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// The admin methods write to the store first and tell the shard after, so
// a failed write (messages.ErrUnavailable, ErrConflict, ErrNotFound)
// changes nothing. Once the store has the change, the shard is told even
// if the caller has gone away: otherwise the key index would lag the store.

// CreateClient stores c and indexes its key, caching a full bucket so its
// first request needs no load. With HashAPIKeys the store gets no clear
// key; the returned client still carries it, for the one answer that
// shows it.
func (l *Limiter) CreateClient(ctx context.Context, c messages.Client) (messages.Client, error) {
	stored := l.atRest(c)
	if err := l.store.CreateClient(ctx, stored); err != nil {
		return messages.Client{}, err
	}
	s := l.shardFor(c.KeyHash)
	reply := make(chan struct{}, 1)
	_, err := ask(context.WithoutCancel(ctx), s, &installMsg{client: stored, b: newBucket(stored), reply: reply}, reply)
	return c, err
}

// GetClient returns the client with its bucket as of now.
func (l *Limiter) GetClient(ctx context.Context, id string) (messages.Client, error) {
	c, err := l.store.GetClient(ctx, id)
	if err != nil {
		return messages.Client{}, err
	}
	return l.live(ctx, c)
}

// ListClients returns a page of clients ordered by id, buckets as of now.
func (l *Limiter) ListClients(ctx context.Context, after string, limit int) ([]messages.Client, error) {
	cs, err := l.store.ListClients(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	for i := range cs {
		if cs[i], err = l.live(ctx, cs[i]); err != nil {
			return nil, err
		}
	}
	return cs, nil
}

// UpdateLimits changes a client's rate and/or capacity, live: a cached
// bucket keeps the tokens it earned and clamps them to the new capacity.
func (l *Limiter) UpdateLimits(ctx context.Context, id string, lim messages.Limits) (messages.Client, error) {
	c, err := l.store.UpdateLimits(ctx, id, lim)
	if err != nil {
		return messages.Client{}, err
	}
	reply := make(chan peekReply, 1)
	rep, err := ask(context.WithoutCancel(ctx), l.shardFor(c.KeyHash), &limitsMsg{hash: c.KeyHash, limits: lim, reply: reply}, reply)
	if err != nil {
		return messages.Client{}, err
	}
	return withBucket(c, rep, time.Now()), nil
}

// DeleteClient removes a client; its key is refused from the next request
// on, and its bucket is never written back.
func (l *Limiter) DeleteClient(ctx context.Context, id string) error {
	c, err := l.store.DeleteClient(ctx, id)
	if err != nil {
		return err
	}
	reply := make(chan peekReply, 1)
	_, err = ask(context.WithoutCancel(ctx), l.shardFor(c.KeyHash), &removeMsg{hash: c.KeyHash, clientID: c.ID, deleted: true, reply: reply}, reply)
	return err
}

// RotateKey gives a client newKey. The old key is refused from the next
// request on; the bucket carries over to the new key. The returned client
// carries newKey in clear.
func (l *Limiter) RotateKey(ctx context.Context, id, newKey string) (messages.Client, error) {
	next := messages.Client{APIKey: newKey, KeyHash: messages.HashKey(newKey), KeyPrefix: messages.KeyPrefix(newKey)}
	stored := l.atRest(next)
	old, err := l.store.RotateKey(ctx, id, stored.APIKey, stored.KeyHash, stored.KeyPrefix)
	if err != nil {
		return messages.Client{}, err
	}
	ctx = context.WithoutCancel(ctx)
	reply := make(chan peekReply, 1)
	rep, err := ask(ctx, l.shardFor(old.KeyHash), &removeMsg{hash: old.KeyHash, clientID: old.ID, reply: reply}, reply)
	if err != nil {
		return messages.Client{}, err
	}
	c := old
	c.APIKey, c.KeyHash, c.KeyPrefix = stored.APIKey, stored.KeyHash, stored.KeyPrefix
	b := newBucket(c)
	if rep.cached {
		b = rep.b
	}
	done := make(chan struct{}, 1)
	if _, err := ask(ctx, l.shardFor(c.KeyHash), &installMsg{client: c, b: b, dirty: rep.cached, reply: done}, done); err != nil {
		return messages.Client{}, err
	}
	c = withBucket(c, peekReply{b: b, cached: true}, time.Now())
	c.APIKey = newKey
	return c, nil
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
	return withBucket(c, rep, time.Now()), nil
}

// withBucket returns c with the live bucket of rep, or its stored bucket,
// refilled to now.
func withBucket(c messages.Client, rep peekReply, now time.Time) messages.Client {
	b := rep.b
	if !rep.cached {
		b = newBucket(c)
	}
	b.refill(now.UnixNano())
	c.RatePerSec, c.Capacity, c.Tokens = b.rate, b.capacity, b.tokens
	c.LastRefill = time.Unix(0, b.last).UTC()
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
