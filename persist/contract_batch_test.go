package persist_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

func testSaveStates(t *testing.T, s persist.Store) {
	ctx := context.Background()
	cs := create(t, s, "a", "b", "gone")
	_, err := s.DeleteClient(ctx, "gone")
	require.NoError(t, err)
	later := epoch.Add(90 * time.Second)

	require.NoError(t, s.SaveStates(ctx, nil))
	require.NoError(t, s.SaveStates(ctx, []messages.BucketState{
		{ClientID: "a", Tokens: 1, LastRefill: epoch}, // superseded below
		{ClientID: "gone", Tokens: 3, LastRefill: later},
		{ClientID: "never-existed", Tokens: 3, LastRefill: later},
		{ClientID: "unstorable\x00", Tokens: 3, LastRefill: later}, // must not fail the batch
		{ClientID: "b", Tokens: 500, LastRefill: later},            // above capacity 20
		{ClientID: "a", Tokens: 2.5, LastRefill: later},
	}))

	want := cs[0]
	want.Tokens, want.LastRefill = 2.5, later
	got, err := s.GetClient(ctx, "a")
	require.NoError(t, err)
	assertClient(t, want, got)

	got, err = s.GetClient(ctx, "b")
	require.NoError(t, err)
	assert.InDelta(t, 20, got.Tokens, 0, "tokens clamp to capacity")

	for _, id := range []string{"gone", "never-existed"} {
		_, err = s.GetClient(ctx, id)
		require.ErrorIs(t, err, messages.ErrNotFound, "a save must not create %q", id)
	}
}

// seed creates n clients named prefix00000.. in one bulk insert.
func seed(t testing.TB, s persist.Store, prefix string, n int) []messages.Client {
	t.Helper()
	bulk, ok := s.(persist.BulkCreator)
	require.True(t, ok, "%T does not implement BulkCreator", s)
	cs := make([]messages.Client, n)
	for i := range cs {
		cs[i] = newClient(fmt.Sprintf("%s%05d", prefix, i))
	}
	require.NoError(t, bulk.CreateClients(context.Background(), cs))
	return cs
}

func testSaveStates10k(t *testing.T, s persist.Store) {
	ctx := context.Background()
	cs := seed(t, s, "c", 10_000)
	states := make([]messages.BucketState, len(cs))
	for i, c := range cs {
		states[i] = messages.BucketState{
			ClientID:   c.ID,
			Tokens:     float64(i%20) + 0.25,
			LastRefill: epoch.Add(time.Duration(i) * time.Millisecond),
		}
	}
	require.NoError(t, s.SaveStates(ctx, states))

	for i := 0; i < len(cs); i += 97 {
		want := cs[i]
		want.Tokens, want.LastRefill = states[i].Tokens, states[i].LastRefill
		got, err := s.GetClient(ctx, want.ID)
		require.NoError(t, err)
		assertClient(t, want, got)
	}
}

func testBulkCreate(t *testing.T, s persist.Store) {
	ctx := context.Background()
	bulk := s.(persist.BulkCreator)
	create(t, s, "existing")
	require.NoError(t, bulk.CreateClients(ctx, nil))

	tests := []struct {
		name    string
		batch   []messages.Client
		wantErr error
	}{
		{"id taken in store", []messages.Client{newClient("n1"), newClient("existing")}, messages.ErrConflict},
		{"id twice in batch", []messages.Client{newClient("n1"), newClient("n1")}, messages.ErrConflict},
		{"invalid", []messages.Client{newClient("n1"), {ID: "n2", RatePerSec: -1, Capacity: 1}}, persist.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorIs(t, bulk.CreateClients(ctx, tt.batch), tt.wantErr)
			_, err := s.GetClient(ctx, "n1")
			require.ErrorIs(t, err, messages.ErrNotFound, "all or nothing")
		})
	}
}

func testPagination(t *testing.T, s persist.Store) {
	ctx := context.Background()
	// Punctuation and case, where locale collations and byte order differ.
	prefixes := []string{"A", "a", "B", "b", "-", ".", "_", ":", "0", "a-", "a.", "A_"}
	var ids []string
	for i := range 250 {
		ids = append(ids, fmt.Sprintf("%s%d", prefixes[i%len(prefixes)], i))
	}
	create(t, s, ids...)
	slices.Sort(ids) // byte order

	var got []string
	after := ""
	for page := 0; ; page++ {
		require.Less(t, page, 10, "pagination does not end")
		cs, err := s.ListClients(ctx, after, 100)
		require.NoError(t, err)
		require.LessOrEqual(t, len(cs), 100)
		if len(cs) == 0 {
			break
		}
		for _, c := range cs {
			got = append(got, c.ID)
		}
		after = cs[len(cs)-1].ID
	}
	assert.Equal(t, ids, got, "all ids, once each, in byte order")

	cs, err := s.ListClients(ctx, "", persist.MaxPage+500)
	require.NoError(t, err)
	assert.Len(t, cs, 250)
	cs, err = s.ListClients(ctx, "", 0)
	require.NoError(t, err)
	assert.Empty(t, cs)
	_, err = s.ListClients(ctx, "\xff", 10)
	require.ErrorIs(t, err, persist.ErrInvalid)
	cs, err = s.ListClients(ctx, ids[10]+"\x01", 1) // after an id that is not stored
	require.NoError(t, err)
	require.Len(t, cs, 1)
	assert.Equal(t, ids[11], cs[0].ID)
}

func testKeyRefs(t *testing.T, s persist.Store) {
	ctx := context.Background()
	refs, err := s.KeyRefs(ctx)
	require.NoError(t, err)
	assert.Empty(t, refs)

	cs := seed(t, s, "k", 300)
	_, err = s.DeleteClient(ctx, cs[7].ID)
	require.NoError(t, err)
	want := make([]messages.KeyRef, 0, len(cs))
	for i, c := range cs {
		if i != 7 {
			want = append(want, messages.KeyRef{ClientID: c.ID, KeyHash: c.KeyHash,
				RatePerSec: c.RatePerSec, Capacity: c.Capacity, Version: 1})
		}
	}
	refs, err = s.KeyRefs(ctx)
	require.NoError(t, err)
	assert.ElementsMatch(t, want, refs)
}

// testConcurrentWriters runs writers side by side (-race watches) and
// checks every one's final state.
func testConcurrentWriters(t *testing.T, s persist.Store) {
	ctx := context.Background()
	const writers, each = 8, 15
	var g errgroup.Group
	for w := range writers {
		g.Go(func() error { return writer(ctx, s, w, each) })
	}
	require.NoError(t, g.Wait())

	refs, err := s.KeyRefs(ctx)
	require.NoError(t, err)
	require.Len(t, refs, writers*(each-1), "one client per writer deleted")
	for _, ref := range refs {
		c, err := s.GetClientByKey(ctx, ref.KeyHash)
		require.NoError(t, err)
		assert.Equal(t, ref.ClientID, c.ID)
		assert.Equal(t, "rotated-"+c.ID, c.APIKey)
		assert.Equal(t, int64(10), c.Capacity)
		assert.InDelta(t, 10, c.Tokens, 0, "saved 15, clamped to 10")
	}
}

// writer creates its clients, updates, saves, rotates and deletes one.
func writer(ctx context.Context, s persist.Store, w, n int) error {
	ids := make([]string, n)
	states := make([]messages.BucketState, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("w%d-%02d", w, i)
		if err := s.CreateClient(ctx, newClient(ids[i])); err != nil {
			return err
		}
		states[i] = messages.BucketState{ClientID: ids[i], Tokens: 15, LastRefill: epoch}
	}
	capacity := int64(10)
	for _, id := range ids {
		if _, err := s.UpdateLimits(ctx, id, messages.Limits{Capacity: &capacity}); err != nil {
			return err
		}
		key := "rotated-" + id
		if _, err := s.RotateKey(ctx, id, key, messages.HashKey(key), key[:6]); err != nil {
			return err
		}
		if _, err := s.ListClients(ctx, "", 50); err != nil {
			return err
		}
	}
	if err := s.SaveStates(ctx, states); err != nil {
		return err
	}
	_, err := s.DeleteClient(ctx, ids[0])
	return err
}

// runReopen checks that what was written survives Close and a new open
// of the same storage. storage makes new storage and returns its opener.
func runReopen(t *testing.T, storage func(t *testing.T) func() persist.Store) {
	ctx := context.Background()
	open := storage(t)
	s := open()
	cs := seed(t, s, "d", 50)
	capacity, rate := int64(3), math.Pi
	_, err := s.UpdateLimits(ctx, cs[1].ID, messages.Limits{Capacity: &capacity, RatePerSec: &rate})
	require.NoError(t, err)
	const key = "durable-key-0123456789"
	_, err = s.RotateKey(ctx, cs[2].ID, key, messages.HashKey(key), key[:6])
	require.NoError(t, err)
	_, err = s.DeleteClient(ctx, cs[3].ID)
	require.NoError(t, err)
	later := epoch.Add(time.Hour + time.Nanosecond)
	require.NoError(t, s.SaveStates(ctx, []messages.BucketState{{ClientID: cs[0].ID, Tokens: 0.5, LastRefill: later}}))
	require.NoError(t, s.Close())

	s = open()
	want := slices.Clone(cs)
	want[0].Tokens, want[0].LastRefill = 0.5, later
	want[1].Capacity, want[1].RatePerSec, want[1].Tokens = 3, math.Pi, 3
	want[2].APIKey, want[2].KeyHash, want[2].KeyPrefix = key, messages.HashKey(key), key[:6]
	want = slices.Delete(want, 3, 4)
	got, err := s.ListClients(ctx, "", 100)
	require.NoError(t, err)
	require.Len(t, got, len(want))
	for i := range want {
		assertClient(t, want[i], got[i])
	}
	byKey, err := s.GetClientByKey(ctx, messages.HashKey(key))
	require.NoError(t, err)
	assert.Equal(t, cs[2].ID, byKey.ID)
	require.NoError(t, s.Close())
}
