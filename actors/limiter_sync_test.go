package actors

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// Another instance's changes reach this one as messages.Change values; the
// store (memStore) is shared, the Limiter is this instance's.

func changeOf(c messages.Client) messages.Change {
	return messages.Change{ClientID: c.ID, KeyHash: c.KeyHash, RatePerSec: c.RatePerSec, Capacity: c.Capacity}
}

func TestApplyChangeFromAnotherInstance(t *testing.T) {
	ctx := t.Context()
	store := newMemStore()
	l := startLimiter(t, store, LimiterConfig{})

	// Created elsewhere: indexed, loaded on first use.
	c := newClient("c", "key-c-0123456789", 0.001, 5, time.Now())
	require.NoError(t, store.CreateClient(ctx, c))
	_, err := l.Admit(ctx, "key-c-0123456789")
	require.ErrorIs(t, err, messages.ErrUnknownKey, "not known before the change arrives")
	require.NoError(t, l.ApplyChange(ctx, changeOf(c)))
	d, err := l.Admit(ctx, "key-c-0123456789")
	require.NoError(t, err)
	assert.Equal(t, int64(4), d.Remaining)

	// Limits changed elsewhere apply to the cached bucket at once.
	capacity := int64(2)
	c, err = store.UpdateLimits(ctx, "c", messages.Limits{Capacity: &capacity})
	require.NoError(t, err)
	require.NoError(t, l.ApplyChange(ctx, changeOf(c)))
	d, err = l.Admit(ctx, "key-c-0123456789")
	require.NoError(t, err)
	assert.Equal(t, int64(2), d.Limit)
	assert.Equal(t, int64(1), d.Remaining)

	// Rotated elsewhere: the old key stops, the bucket moves.
	rotated := c
	rotated.KeyHash = messages.HashKey("key-c2-0123456789")
	_, err = store.RotateKey(ctx, "c", "key-c2-0123456789", rotated.KeyHash, "key-c2")
	require.NoError(t, err)
	ch := changeOf(rotated)
	ch.OldKeyHash = c.KeyHash
	require.NoError(t, l.ApplyChange(ctx, ch))
	_, err = l.Admit(ctx, "key-c-0123456789")
	require.ErrorIs(t, err, messages.ErrUnknownKey)
	d, err = l.Admit(ctx, "key-c2-0123456789")
	require.NoError(t, err)
	assert.Equal(t, int64(0), d.Remaining, "the bucket carried over")

	// Deleted elsewhere: refused at once.
	_, err = store.DeleteClient(ctx, "c")
	require.NoError(t, err)
	require.NoError(t, l.ApplyChange(ctx, messages.Change{Deleted: true, ClientID: "c", KeyHash: rotated.KeyHash}))
	_, err = l.Admit(ctx, "key-c2-0123456789")
	require.ErrorIs(t, err, messages.ErrUnknownKey)
	assert.Equal(t, int64(1), store.keyLoads.Load())
}

func TestEchoOfOwnChangeKeepsTheLiveBucket(t *testing.T) {
	ctx := t.Context()
	store := newMemStore()
	l := startLimiter(t, store, LimiterConfig{})
	c, err := l.CreateClient(ctx, newClient("c", "key-c-0123456789", 0.001, 5, time.Now()))
	require.NoError(t, err)
	for range 3 {
		_, err := l.Admit(ctx, "key-c-0123456789")
		require.NoError(t, err)
	}
	require.NoError(t, l.ApplyChange(ctx, changeOf(c)))
	d, err := l.Admit(ctx, "key-c-0123456789")
	require.NoError(t, err)
	assert.Equal(t, int64(1), d.Remaining, "the echo did not refill the bucket")
}

func TestResyncCatchesUpWithMissedChanges(t *testing.T) {
	ctx := t.Context()
	store := newMemStore()
	gone := newClient("gone", "key-gone-0123456789", 1, 5, time.Now())
	require.NoError(t, store.CreateClient(ctx, gone))
	l := startLimiter(t, store, LimiterConfig{})
	_, err := l.Admit(ctx, "key-gone-0123456789")
	require.NoError(t, err, "cached")

	// Behind this instance's back, as if the notifications were lost.
	_, err = store.DeleteClient(ctx, "gone")
	require.NoError(t, err)
	require.NoError(t, store.CreateClient(ctx, newClient("new", "key-new-0123456789", 1, 5, time.Now())))

	require.NoError(t, l.Resync(ctx, false))
	_, err = l.Admit(ctx, "key-gone-0123456789")
	require.ErrorIs(t, err, messages.ErrUnknownKey, "a deleted client is dropped even when cached")
	_, err = l.Admit(ctx, "key-new-0123456789")
	require.NoError(t, err)
}

func TestResyncWithDropCacheReloadsLimits(t *testing.T) {
	ctx := t.Context()
	store := newMemStore()
	require.NoError(t, store.CreateClient(ctx, newClient("c", "key-c-0123456789", 1, 5, time.Now())))
	l := startLimiter(t, store, LimiterConfig{})
	_, err := l.Admit(ctx, "key-c-0123456789")
	require.NoError(t, err)
	capacity := int64(50)
	_, err = store.UpdateLimits(ctx, "c", messages.Limits{Capacity: &capacity})
	require.NoError(t, err)

	require.NoError(t, l.Resync(ctx, true))
	d, err := l.Admit(ctx, "key-c-0123456789")
	require.NoError(t, err)
	assert.Equal(t, int64(50), d.Limit)
	assert.Equal(t, int64(3), d.Remaining, "resumed from the live state, not the store's older one")
	states, _, err := l.Collect(ctx)
	require.NoError(t, err)
	assert.Len(t, states, 1, "the dropped bucket's state was kept for the persister")
}

func TestResyncKeepsChangesMadeWhileItReads(t *testing.T) {
	ctx := t.Context()
	store := newMemStore()
	require.NoError(t, store.CreateClient(ctx, newClient("old", "key-old-0123456789", 1, 5, time.Now())))
	l := startLimiter(t, store, LimiterConfig{Shards: 1})
	store.afterKeyRefs = func() {
		store.afterKeyRefs = nil
		_, err := l.CreateClient(ctx, newClient("new", "key-new-0123456789", 1, 5, time.Now()))
		assert.NoError(t, err)
		assert.NoError(t, l.DeleteClient(ctx, "old"))
	}
	require.NoError(t, l.Resync(ctx, false))
	_, err := l.Admit(ctx, "key-new-0123456789")
	require.NoError(t, err, "created during the snapshot, still indexed")
	_, err = l.Admit(ctx, "key-old-0123456789")
	require.ErrorIs(t, err, messages.ErrUnknownKey, "deleted during the snapshot, still gone")
}

// A periodic resync (no cache drop) reloads the limits of cached clients,
// not only keys: a PATCH whose notification was missed still arrives
// (issue 11 item 6).
func TestResyncReloadsLimitsOfCachedClients(t *testing.T) {
	ctx := t.Context()
	store := newMemStore()
	require.NoError(t, store.CreateClient(ctx, newClient("c", "key-c-0123456789", 1e-6, 5, time.Now())))
	l := startLimiter(t, store, LimiterConfig{})
	for range 2 {
		_, err := l.Admit(ctx, "key-c-0123456789")
		require.NoError(t, err)
	}
	capacity := int64(50)
	_, err := store.UpdateLimits(ctx, "c", messages.Limits{Capacity: &capacity})
	require.NoError(t, err)

	require.NoError(t, l.Resync(ctx, false))
	d, err := l.Admit(ctx, "key-c-0123456789")
	require.NoError(t, err)
	assert.Equal(t, int64(50), d.Limit)
	assert.Equal(t, int64(2), d.Remaining, "the live bucket kept its tokens")
}
