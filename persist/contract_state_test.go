package persist_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// A state saved from a deleted client must not land on the client created
// again with its id (issue 11 item 5).
func testSaveLandsOnItsGeneration(t *testing.T, s persist.Store) {
	ctx := context.Background()
	old := newClient("reborn")
	old.Generation = 1
	require.NoError(t, s.CreateClient(ctx, old))
	_, err := s.DeleteClient(ctx, "reborn")
	require.NoError(t, err)
	reborn := newClient("reborn")
	reborn.Generation = 2
	require.NoError(t, s.CreateClient(ctx, reborn))

	later := epoch.Add(time.Minute)
	require.NoError(t, s.SaveStates(ctx, []messages.BucketState{
		{ClientID: "reborn", Generation: 1, Tokens: 3, LastRefill: later},
	}))
	got, err := s.GetClient(ctx, "reborn")
	require.NoError(t, err)
	assertClient(t, reborn, got)

	require.NoError(t, s.SaveStates(ctx, []messages.BucketState{
		{ClientID: "reborn", Generation: 2, Tokens: 4, LastRefill: later},
	}))
	got, err = s.GetClient(ctx, "reborn")
	require.NoError(t, err)
	assert.InDelta(t, 4, got.Tokens, 0)
	assert.Equal(t, int64(2), got.Generation)
}

// An older state never replaces a newer one (issue 11 item 5).
func testSaveNeverReplacesNewerState(t *testing.T, s persist.Store) {
	ctx := context.Background()
	c := create(t, s, "fresh")[0]
	newer, older := epoch.Add(time.Minute), epoch.Add(time.Second)
	require.NoError(t, s.SaveStates(ctx, []messages.BucketState{{ClientID: "fresh", Tokens: 2, LastRefill: newer}}))
	require.NoError(t, s.SaveStates(ctx, []messages.BucketState{{ClientID: "fresh", Tokens: 19, LastRefill: older}}))
	want := c
	want.Tokens, want.LastRefill = 2, newer
	got, err := s.GetClient(ctx, "fresh")
	require.NoError(t, err)
	assertClient(t, want, got)
}

// Every admin change bumps the version by one; saves leave it.
func testVersions(t *testing.T, s persist.Store) {
	ctx := context.Background()
	create(t, s, "v")
	version := func() int64 {
		t.Helper()
		got, err := s.GetClient(ctx, "v")
		require.NoError(t, err)
		return got.Version
	}
	assert.Equal(t, int64(1), version())
	rate := 2.0
	c, err := s.UpdateLimits(ctx, "v", messages.Limits{RatePerSec: &rate})
	require.NoError(t, err)
	assert.Equal(t, int64(2), c.Version)
	const key = "v-key-0123456789abcdef"
	old, err := s.RotateKey(ctx, "v", key, messages.HashKey(key), key[:6])
	require.NoError(t, err)
	assert.Equal(t, int64(2), old.Version)
	assert.Equal(t, int64(3), version())
	require.NoError(t, s.SaveStates(ctx, []messages.BucketState{{ClientID: "v", Tokens: 1, LastRefill: epoch.Add(time.Hour)}}))
	assert.Equal(t, int64(3), version())
	refs, err := s.KeyRefs(ctx)
	require.NoError(t, err)
	require.Len(t, refs, 1)
	assert.Equal(t, messages.KeyRef{ClientID: "v", KeyHash: messages.HashKey(key), RatePerSec: 2, Capacity: 20, Version: 3}, refs[0])
}

// A rate change refills the stored bucket at the old rate up to its time
// first, as the cached path does (issue 11 item 4).
func testRateChangeRefillsAtOldRateFirst(t *testing.T, s persist.Store) {
	ctx := context.Background()
	c := newClient("uncached") // rate 5, capacity 20
	c.Tokens = 0
	require.NoError(t, s.CreateClient(ctx, c))
	rate := 100.0
	at := epoch.Add(2 * time.Second)
	got, err := s.UpdateLimits(ctx, "uncached", messages.Limits{RatePerSec: &rate, At: at})
	require.NoError(t, err)
	assert.InDelta(t, 10, got.Tokens, 1e-6, "2 s at the old 5/s")
	assert.True(t, at.Truncate(time.Microsecond).Equal(got.LastRefill), "last_refill %v", got.LastRefill)

	// A stored last_refill after At counts as At: no refill, kept.
	small := int64(4)
	got, err = s.UpdateLimits(ctx, "uncached", messages.Limits{Capacity: &small, At: epoch})
	require.NoError(t, err)
	assert.InDelta(t, 4, got.Tokens, 1e-6)
	assert.True(t, at.Truncate(time.Microsecond).Equal(got.LastRefill), "last_refill %v", got.LastRefill)
}

// With hash_api_keys turned on, keys kept in clear are erased at start
// (issue 12 item 12).
func testEraseClearKeys(t *testing.T, s persist.Store) {
	ctx := context.Background()
	cs := create(t, s, "clear1", "clear2")
	hashed := newClient("hashed")
	hashed.APIKey = ""
	require.NoError(t, s.CreateClient(ctx, hashed))

	n, err := s.(persist.KeyEraser).EraseClearKeys(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(2), n)
	for _, c := range append(cs, hashed) {
		got, err := s.GetClientByKey(ctx, c.KeyHash)
		require.NoError(t, err)
		want := c
		want.APIKey = ""
		assertClient(t, want, got)
	}
	n, err = s.(persist.KeyEraser).EraseClearKeys(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
}
