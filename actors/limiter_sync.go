package actors

import (
	"context"
	"errors"
	"fmt"

	"github.com/tollgate/tollgate/messages"
)

// ApplyChange brings this instance up to date with an admin change made on
// any instance sharing the store, as the store's notifications report it.
// It does not apply the notification's values: under the client's place
// in adminOrder it reads the client as the store has it now and applies
// that, so a notification overtaken by later changes (this instance's own,
// or the echo of one it applied already) never takes the cache back to an
// older state. The notification says which keys the client may still be
// held under here.
func (l *Limiter) ApplyChange(ctx context.Context, ch messages.Change) error {
	if ch.Resync {
		return l.Resync(ctx, ch.DropCache)
	}
	unlock, err := l.order.lock(ctx, ch.ClientID)
	if err != nil {
		return err
	}
	defer unlock()
	c, err := l.store.GetClient(ctx, ch.ClientID)
	gone := errors.Is(err, messages.ErrNotFound)
	if err != nil && !gone {
		return fmt.Errorf("actors: apply change of %q: %w", ch.ClientID, err)
	}
	var moved peekReply
	for _, h := range []messages.KeyHash{ch.KeyHash, ch.OldKeyHash} {
		if h == (messages.KeyHash{}) || (!gone && h == c.KeyHash) {
			continue
		}
		reply := make(chan peekReply, 1)
		rep, err := ask(ctx, l.shardFor(h), &removeMsg{hash: h, clientID: ch.ClientID, deleted: gone, reply: reply}, reply)
		if err != nil {
			return err
		}
		if rep.cached && !gone && rep.generation == c.Generation {
			moved = rep
		}
	}
	if gone {
		return nil
	}
	reply := make(chan peekReply, 1)
	_, err = ask(ctx, l.shardFor(c.KeyHash), &syncMsg{client: c, moved: moved, reply: reply}, reply)
	return err
}

// Resync reloads the key index, and the limits of cached clients, from the
// store, for when change notifications may have been missed. Keys indexed
// or dropped while the snapshot was read stay as they are; limits apply
// only when newer than the cached ones. With dropCache, cached clients are
// dropped too (their state kept for the persister) and reload on their
// next request.
func (l *Limiter) Resync(ctx context.Context, dropCache bool) error {
	for _, s := range l.shards {
		reply := make(chan struct{}, 1)
		if _, err := ask(ctx, s, &markMsg{reply: reply}, reply); err != nil {
			return err
		}
	}
	refs, err := l.store.KeyRefs(ctx)
	if err != nil {
		// The marks stay: the next resync replaces them.
		return fmt.Errorf("actors: resync key index: %w", err)
	}
	byShard := make([][]messages.KeyRef, len(l.shards))
	for _, r := range refs {
		i := r.KeyHash.Fingerprint() % uint64(len(l.shards))
		byShard[i] = append(byShard[i], r)
	}
	for i, s := range l.shards {
		reply := make(chan struct{}, 1)
		if _, err := ask(ctx, s, &replaceIndexMsg{refs: byShard[i], dropCache: dropCache, reply: reply}, reply); err != nil {
			return err
		}
	}
	l.log.Info("key index resynced", "clients", len(refs), "drop_cache", dropCache)
	return nil
}
