package actors

import (
	"context"
	"fmt"

	"github.com/tollgate/tollgate/messages"
)

// ApplyChange brings this instance up to date with an admin change made on
// any instance sharing the store, as the store's notifications report it.
// Changes this instance made itself come back too; applying them again is
// harmless, and a bucket already cached here is never replaced by an echo.
func (l *Limiter) ApplyChange(ctx context.Context, ch messages.Change) error {
	switch {
	case ch.Resync:
		return l.Resync(ctx, ch.DropCache)
	case ch.Deleted:
		reply := make(chan peekReply, 1)
		_, err := ask(ctx, l.shardFor(ch.KeyHash), &removeMsg{hash: ch.KeyHash, clientID: ch.ClientID, deleted: true, reply: reply}, reply)
		return err
	}
	c := messages.Client{ID: ch.ClientID, KeyHash: ch.KeyHash, RatePerSec: ch.RatePerSec, Capacity: ch.Capacity}
	install := &installMsg{client: c, indexOnly: true, reply: make(chan struct{}, 1)}
	if ch.OldKeyHash != (messages.KeyHash{}) && ch.OldKeyHash != ch.KeyHash {
		// A rotation: the bucket, if cached here, moves to the new key.
		reply := make(chan peekReply, 1)
		rep, err := ask(ctx, l.shardFor(ch.OldKeyHash), &removeMsg{hash: ch.OldKeyHash, clientID: ch.ClientID, reply: reply}, reply)
		if err != nil {
			return err
		}
		if rep.cached {
			install = &installMsg{client: c, b: rep.b, dirty: true, keepCached: true, reply: install.reply}
		}
	}
	s := l.shardFor(ch.KeyHash)
	if _, err := ask(ctx, s, install, install.reply); err != nil {
		return err
	}
	// Limits apply to a cached bucket at once; an uncached one loads them.
	rate, capacity := ch.RatePerSec, ch.Capacity
	reply := make(chan peekReply, 1)
	_, err := ask(ctx, s, &limitsMsg{hash: ch.KeyHash, limits: messages.Limits{RatePerSec: &rate, Capacity: &capacity}, reply: reply}, reply)
	return err
}

// Resync reloads the key index from the store, for when change
// notifications may have been missed. Keys indexed or dropped while the
// snapshot was read stay as they are. With dropCache, cached clients are
// dropped too (their state kept for the persister) and reload on their
// next request, picking up limits changed meanwhile.
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
	fps := make([][]uint64, len(l.shards))
	for _, r := range refs {
		i := r.KeyHash.Fingerprint() % uint64(len(l.shards))
		fps[i] = append(fps[i], r.KeyHash.Fingerprint())
	}
	for i, s := range l.shards {
		reply := make(chan struct{}, 1)
		if _, err := ask(ctx, s, &replaceIndexMsg{fps: fps[i], dropCache: dropCache, reply: reply}, reply); err != nil {
			return err
		}
	}
	l.log.Info("key index resynced", "clients", len(refs), "drop_cache", dropCache)
	return nil
}
