package persist_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// The contract suite: every Store implementation must pass it unchanged.
// open returns a new, empty store that t's cleanup closes. Subtests run in
// parallel, each on its own store: most of their time is spent waiting on
// PostgreSQL.
func runContract(t *testing.T, open func(t *testing.T) persist.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s persist.Store)
	}{
		{"CreateGet", testCreateGet},
		{"HashedAtRest", testHashedAtRest},
		{"Conflicts", testConflicts},
		{"Invalid", testInvalid},
		{"NotFound", testNotFound},
		{"UpdateLimits", testUpdateLimits},
		{"RotateKey", testRotateKey},
		{"Delete", testDelete},
		{"SaveStates", testSaveStates},
		{"SaveStates10k", testSaveStates10k},
		{"SaveLandsOnItsGeneration", testSaveLandsOnItsGeneration},
		{"SaveNeverReplacesNewerState", testSaveNeverReplacesNewerState},
		{"Versions", testVersions},
		{"RateChangeRefillsAtOldRateFirst", testRateChangeRefillsAtOldRateFirst},
		{"EraseClearKeys", testEraseClearKeys},
		{"BulkCreate", testBulkCreate},
		{"Pagination", testPagination},
		{"KeyRefs", testKeyRefs},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, open(t))
		})
	}
}

// epoch has nanoseconds and a zone on purpose: stores keep microseconds
// and hand times back in UTC.
var epoch = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("X", 3600))

// newClient returns a valid client whose key is derived from id.
func newClient(id string) messages.Client {
	key := "key-" + id + "-0123456789abcdef"
	return messages.Client{
		ID:         id,
		APIKey:     key,
		KeyHash:    messages.HashKey(key),
		KeyPrefix:  key[:messages.KeyPrefixLen],
		RatePerSec: 5,
		Capacity:   20,
		Tokens:     20,
		LastRefill: epoch,
	}
}

func create(t *testing.T, s persist.Store, ids ...string) []messages.Client {
	t.Helper()
	cs := make([]messages.Client, len(ids))
	for i, id := range ids {
		cs[i] = newClient(id)
		require.NoError(t, s.CreateClient(context.Background(), cs[i]))
	}
	return cs
}

// assertClient compares clients as the stores keep them: the time at
// microsecond precision, in UTC. Versions are testVersions' concern.
func assertClient(t *testing.T, want, got messages.Client) {
	t.Helper()
	want.Version, got.Version = 0, 0
	wantTime := want.LastRefill.Truncate(time.Microsecond)
	assert.True(t, wantTime.Equal(got.LastRefill), "last_refill: want %v, got %v", wantTime, got.LastRefill)
	assert.Equal(t, time.UTC, got.LastRefill.Location())
	want.LastRefill, got.LastRefill = time.Time{}, time.Time{}
	assert.Equal(t, want, got)
}

func testCreateGet(t *testing.T, s persist.Store) {
	ctx := context.Background()
	c := newClient("alice")
	require.NoError(t, s.CreateClient(ctx, c))

	got, err := s.GetClient(ctx, "alice")
	require.NoError(t, err)
	assertClient(t, c, got)

	got, err = s.GetClientByKey(ctx, c.KeyHash)
	require.NoError(t, err)
	assertClient(t, c, got)
	require.NoError(t, s.Ping(ctx))
}

func testHashedAtRest(t *testing.T, s persist.Store) {
	ctx := context.Background()
	c := newClient("hashed")
	c.APIKey = ""
	require.NoError(t, s.CreateClient(ctx, c))
	got, err := s.GetClientByKey(ctx, c.KeyHash)
	require.NoError(t, err)
	assertClient(t, c, got)
	assert.Empty(t, got.APIKey)
	assert.Equal(t, c.KeyPrefix, got.KeyPrefix)
}

func testConflicts(t *testing.T, s persist.Store) {
	ctx := context.Background()
	orig := create(t, s, "taken")[0]

	sameID := newClient("other")
	sameID.ID = "taken"
	err := s.CreateClient(ctx, sameID)
	require.ErrorIs(t, err, messages.ErrConflict)
	assert.Contains(t, err.Error(), "client_id")

	sameKey := newClient("other")
	sameKey.KeyHash = orig.KeyHash
	err = s.CreateClient(ctx, sameKey)
	require.ErrorIs(t, err, messages.ErrConflict)
	assert.Contains(t, err.Error(), "api_key")

	got, err := s.GetClient(ctx, "taken")
	require.NoError(t, err)
	assertClient(t, orig, got)
	_, err = s.GetClient(ctx, "other")
	require.ErrorIs(t, err, messages.ErrNotFound)
}

func testInvalid(t *testing.T, s persist.Store) {
	ctx := context.Background()
	mod := func(f func(*messages.Client)) messages.Client {
		c := newClient("bad")
		f(&c)
		return c
	}
	creates := []struct {
		name  string
		c     messages.Client
		field string
	}{
		{"empty id", mod(func(c *messages.Client) { c.ID = "" }), "client_id"},
		{"long id", mod(func(c *messages.Client) { c.ID = strings.Repeat("x", 129) }), "client_id"},
		{"zero rate", mod(func(c *messages.Client) { c.RatePerSec = 0 }), "rate_per_sec"},
		{"NaN rate", mod(func(c *messages.Client) { c.RatePerSec = math.NaN() }), "rate_per_sec"},
		{"rate above 1e6", mod(func(c *messages.Client) { c.RatePerSec = 1e6 + 1 }), "rate_per_sec"},
		{"zero capacity", mod(func(c *messages.Client) { c.Capacity = 0 }), "capacity"},
		{"capacity above 1e9", mod(func(c *messages.Client) { c.Capacity = 1e9 + 1 }), "capacity"},
	}
	for _, tt := range creates {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateClient(ctx, tt.c)
			require.ErrorIs(t, err, persist.ErrInvalid)
			assert.Contains(t, err.Error(), tt.field)
		})
	}
	// The limits themselves are accepted.
	edge := mod(func(c *messages.Client) { c.ID, c.RatePerSec, c.Capacity = strings.Repeat("x", 128), 1e6, 1e9 })
	require.NoError(t, s.CreateClient(ctx, edge))

	create(t, s, "ok")
	zero, nan := int64(0), math.NaN()
	for name, l := range map[string]messages.Limits{
		"zero capacity": {Capacity: &zero},
		"NaN rate":      {RatePerSec: &nan},
	} {
		t.Run("update "+name, func(t *testing.T) {
			_, err := s.UpdateLimits(ctx, "ok", l)
			require.ErrorIs(t, err, persist.ErrInvalid)
		})
	}
	got, err := s.GetClient(ctx, "ok")
	require.NoError(t, err)
	assertClient(t, newClient("ok"), got)
}

func testNotFound(t *testing.T, s persist.Store) {
	create(t, s, "present")
	ids := []struct{ name, id string }{
		{"missing", "missing"},
		// Ids no store can hold name no client either.
		{"NUL byte", "nul\x00byte"},
		{"invalid UTF-8", "bad\xffutf8"},
	}
	for _, tt := range ids {
		t.Run(tt.name, func(t *testing.T) { testNotFoundID(t, s, tt.id) })
	}
	_, err := s.GetClientByKey(context.Background(), messages.HashKey("key-missing-0123456789abcdef"))
	require.ErrorIs(t, err, messages.ErrNotFound)
}

func testNotFoundID(t *testing.T, s persist.Store, id string) {
	ctx := context.Background()
	rate := 1.0
	const key = "new-key-0123456789"
	ops := []struct {
		name string
		op   func() error
	}{
		{"GetClient", func() error { _, err := s.GetClient(ctx, id); return err }},
		{"UpdateLimits", func() error {
			_, err := s.UpdateLimits(ctx, id, messages.Limits{RatePerSec: &rate})
			return err
		}},
		{"RotateKey", func() error {
			_, err := s.RotateKey(ctx, id, key, messages.HashKey(key), key[:6])
			return err
		}},
		{"DeleteClient", func() error { _, err := s.DeleteClient(ctx, id); return err }},
	}
	for _, tt := range ops {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorIs(t, tt.op(), messages.ErrNotFound)
		})
	}
}

func testUpdateLimits(t *testing.T, s persist.Store) {
	ctx := context.Background()
	c := create(t, s, "limited")[0] // rate 5, capacity 20, tokens 20
	rate, small, big := 7.5, int64(5), int64(100)

	steps := []struct {
		name   string
		limits messages.Limits
		want   func(*messages.Client)
	}{
		{"nothing", messages.Limits{}, func(*messages.Client) {}},
		{"rate only", messages.Limits{RatePerSec: &rate}, func(c *messages.Client) { c.RatePerSec = rate }},
		{"capacity down clamps tokens", messages.Limits{Capacity: &small},
			func(c *messages.Client) { c.Capacity, c.Tokens = small, 5 }},
		{"capacity up keeps tokens", messages.Limits{Capacity: &big}, func(c *messages.Client) { c.Capacity = big }},
		{"both", messages.Limits{RatePerSec: &rate, Capacity: &small}, func(c *messages.Client) { c.Capacity = small }},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.want(&c)
			got, err := s.UpdateLimits(ctx, "limited", st.limits)
			require.NoError(t, err)
			assertClient(t, c, got)
			got, err = s.GetClient(ctx, "limited")
			require.NoError(t, err)
			assertClient(t, c, got)
		})
	}
}

func testRotateKey(t *testing.T, s persist.Store) {
	ctx := context.Background()
	cs := create(t, s, "rotor", "bystander")
	const newKey = "rotated-key-0123456789"
	newHash := messages.HashKey(newKey)

	old, err := s.RotateKey(ctx, "rotor", newKey, newHash, newKey[:6])
	require.NoError(t, err)
	assertClient(t, cs[0], old)

	_, err = s.GetClientByKey(ctx, cs[0].KeyHash)
	require.ErrorIs(t, err, messages.ErrNotFound)
	want := cs[0]
	want.APIKey, want.KeyHash, want.KeyPrefix = newKey, newHash, newKey[:6]
	got, err := s.GetClientByKey(ctx, newHash)
	require.NoError(t, err)
	assertClient(t, want, got)

	// Retrying with the same key is harmless.
	old, err = s.RotateKey(ctx, "rotor", newKey, newHash, newKey[:6])
	require.NoError(t, err)
	assertClient(t, want, old)

	// Another client's key is taken; nothing changes.
	_, err = s.RotateKey(ctx, "rotor", cs[1].APIKey, cs[1].KeyHash, "x")
	require.ErrorIs(t, err, messages.ErrConflict)
	assert.Contains(t, err.Error(), "api_key")
	got, err = s.GetClientByKey(ctx, newHash)
	require.NoError(t, err)
	assertClient(t, want, got)

	// Hashed at rest: no clear key kept.
	const hashedKey = "hashed-key-0123456789"
	_, err = s.RotateKey(ctx, "rotor", "", messages.HashKey(hashedKey), hashedKey[:6])
	require.NoError(t, err)
	got, err = s.GetClient(ctx, "rotor")
	require.NoError(t, err)
	assert.Empty(t, got.APIKey)
	assert.Equal(t, messages.HashKey(hashedKey), got.KeyHash)
}

func testDelete(t *testing.T, s persist.Store) {
	ctx := context.Background()
	c := create(t, s, "doomed")[0]
	old, err := s.DeleteClient(ctx, "doomed")
	require.NoError(t, err)
	assertClient(t, c, old)

	_, err = s.GetClient(ctx, "doomed")
	require.ErrorIs(t, err, messages.ErrNotFound)
	_, err = s.GetClientByKey(ctx, c.KeyHash)
	require.ErrorIs(t, err, messages.ErrNotFound)
	_, err = s.DeleteClient(ctx, "doomed")
	require.ErrorIs(t, err, messages.ErrNotFound)

	// Both the id and the key are free again.
	require.NoError(t, s.CreateClient(ctx, c))
}

func testClose(t *testing.T, s persist.Store) {
	ctx := context.Background()
	create(t, s, "before")
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.Ping(ctx), messages.ErrUnavailable)
	_, err := s.GetClient(ctx, "before")
	require.ErrorIs(t, err, messages.ErrUnavailable)
	require.ErrorIs(t, s.CreateClient(ctx, newClient("after")), messages.ErrUnavailable)
	require.ErrorIs(t, s.SaveStates(ctx, []messages.BucketState{{ClientID: "before"}}), messages.ErrUnavailable)
	require.NoError(t, s.Close(), "second Close")
}
