package actors

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// startLimiter runs a Limiter over store until the test ends.
func startLimiter(t *testing.T, store *memStore, cfg LimiterConfig) *Limiter {
	t.Helper()
	l, err := NewLimiter(t.Context(), cfg, store, discard)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return l
}

func newClient(id, key string, rate float64, capacity int64, now time.Time) messages.Client {
	return messages.Client{
		ID: id, APIKey: key, KeyHash: messages.HashKey(key), KeyPrefix: messages.KeyPrefix(key),
		RatePerSec: rate, Capacity: capacity, Tokens: float64(capacity), LastRefill: now,
	}
}

func TestAdmitUnknownKeysNeverReachTheStore(t *testing.T) {
	store := newMemStore()
	require.NoError(t, store.CreateClient(t.Context(), newClient("a", "key-a-0123456789", 1, 1, time.Now())))
	l := startLimiter(t, store, LimiterConfig{})
	for range 10_000 {
		_, err := l.Admit(t.Context(), rand.Text())
		require.ErrorIs(t, err, messages.ErrUnknownKey)
	}
	assert.Zero(t, store.keyLoads.Load())
}

func TestCreatedClientIsAdmittedOnItsFirstRequestWithoutALoad(t *testing.T) {
	store := newMemStore()
	l := startLimiter(t, store, LimiterConfig{})
	_, err := l.CreateClient(t.Context(), newClient("c1", "key-c1-0123456789", 5, 3, time.Now()))
	require.NoError(t, err)
	d, err := l.Admit(t.Context(), "key-c1-0123456789")
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	assert.Equal(t, "c1", d.ClientID)
	assert.Equal(t, int64(2), d.Remaining)
	assert.Zero(t, store.keyLoads.Load())
}

func TestConcurrentFirstRequestsShareOneLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		store.loadGate = make(chan struct{})
		require.NoError(t, store.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 1, 1000, time.Now())))
		l := startLimiter(t, store, LimiterConfig{})

		var wg sync.WaitGroup
		var allowed atomic.Int64
		for range 100 {
			wg.Go(func() {
				d, err := l.Admit(t.Context(), "key-c-0123456789")
				assert.NoError(t, err)
				if d.Allowed {
					allowed.Add(1)
				}
			})
		}
		synctest.Wait() // one caller holds the load, 99 wait in the shard
		close(store.loadGate)
		wg.Wait()
		assert.Equal(t, int64(1), store.keyLoads.Load())
		assert.Equal(t, int64(100), allowed.Load())
	})
}

func TestUncachedKeyWhileStoreDownIsUnavailable(t *testing.T) {
	store := newMemStore()
	require.NoError(t, store.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 1, 10, time.Now())))
	l := startLimiter(t, store, LimiterConfig{})
	store.down.Store(true)
	_, err := l.Admit(t.Context(), "key-c-0123456789")
	require.ErrorIs(t, err, messages.ErrUnavailable)

	store.down.Store(false) // the failed load left nothing behind
	d, err := l.Admit(t.Context(), "key-c-0123456789")
	require.NoError(t, err)
	assert.True(t, d.Allowed)
}

func TestLoadHungPastTimeoutIsUnavailable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		store.loadGate = make(chan struct{}) // never opened: the store hangs
		require.NoError(t, store.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 1, 10, time.Now())))
		l := startLimiter(t, store, LimiterConfig{LoadTimeout: 2 * time.Second})
		start := time.Now()
		_, err := l.Admit(t.Context(), "key-c-0123456789")
		require.ErrorIs(t, err, messages.ErrUnavailable)
		assert.Equal(t, 2*time.Second, time.Since(start))
	})
}

// 1,000 goroutines admit against 100 clients, a request every 10ms of the
// bubble's fake clock: each client admits exactly its capacity plus what
// its rate earned over the run, within one token.
func TestConcurrentAdmissionMatchesTheBuckets(t *testing.T) {
	const (
		clients    = 100
		goroutines = 1000
		perG       = 20
		step       = 10 * time.Millisecond
		rate       = 20.0
		capacity   = 30
	)
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		start := time.Now()
		keys := make([]string, clients)
		for i := range clients {
			keys[i] = fmt.Sprintf("key-%04d-0123456789", i)
			require.NoError(t, store.CreateClient(t.Context(), newClient(fmt.Sprint("c", i), keys[i], rate, capacity, start)))
		}
		l := startLimiter(t, store, LimiterConfig{Shards: 8})

		var admitted [clients]atomic.Int64
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				for j := range perG {
					if j > 0 {
						time.Sleep(step)
					}
					i := (g + j) % clients
					d, err := l.Admit(context.Background(), keys[i])
					if !assert.NoError(t, err) {
						return
					}
					if d.Allowed {
						admitted[i].Add(1)
					}
				}
			})
		}
		wg.Wait()
		earned := rate * (step * (perG - 1)).Seconds()
		for i := range clients {
			assert.InDelta(t, capacity+earned, float64(admitted[i].Load()), 1.0, "client %d", i)
		}
	})
}

func TestAdminChangesReachTheShardAtOnce(t *testing.T) {
	store := newMemStore()
	l := startLimiter(t, store, LimiterConfig{})
	ctx := t.Context()
	_, err := l.CreateClient(ctx, newClient("c", "key-c-0123456789", 0.001, 10, time.Now()))
	require.NoError(t, err)
	for range 6 {
		_, err := l.Admit(ctx, "key-c-0123456789")
		require.NoError(t, err)
	}

	capacity := int64(2)
	c, err := l.UpdateLimits(ctx, "c", messages.Limits{Capacity: &capacity})
	require.NoError(t, err)
	assert.InDelta(t, 2, c.Tokens, 0.01, "tokens clamp to the new capacity")
	d, err := l.Admit(ctx, "key-c-0123456789")
	require.NoError(t, err)
	assert.Equal(t, int64(2), d.Limit)

	rotated, err := l.RotateKey(ctx, "c", "key-new-0123456789")
	require.NoError(t, err)
	assert.Equal(t, "key-new-0123456789", rotated.APIKey)
	_, err = l.Admit(ctx, "key-c-0123456789")
	require.ErrorIs(t, err, messages.ErrUnknownKey, "old key stops at once")
	d, err = l.Admit(ctx, "key-new-0123456789")
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	assert.Equal(t, int64(0), d.Remaining, "the bucket carried over to the new key")

	require.NoError(t, l.DeleteClient(ctx, "c"))
	_, err = l.Admit(ctx, "key-new-0123456789")
	require.ErrorIs(t, err, messages.ErrUnknownKey)
	assert.Zero(t, store.keyLoads.Load())
}

func TestAdminWritesFailWhenStoreIsDown(t *testing.T) {
	store := newMemStore()
	l := startLimiter(t, store, LimiterConfig{})
	ctx := t.Context()
	_, err := l.CreateClient(ctx, newClient("c", "key-c-0123456789", 1, 10, time.Now()))
	require.NoError(t, err)
	store.down.Store(true)

	_, err = l.CreateClient(ctx, newClient("d", "key-d-0123456789", 1, 10, time.Now()))
	require.ErrorIs(t, err, messages.ErrUnavailable)
	require.ErrorIs(t, l.DeleteClient(ctx, "c"), messages.ErrUnavailable)
	d, err := l.Admit(ctx, "key-c-0123456789")
	require.NoError(t, err, "cached clients keep being admitted")
	assert.True(t, d.Allowed)
	_, err = l.Admit(ctx, "key-d-0123456789")
	require.ErrorIs(t, err, messages.ErrUnknownKey, "the failed create changed nothing")
}

func TestHashedKeysAreNotStoredInClear(t *testing.T) {
	store := newMemStore()
	l := startLimiter(t, store, LimiterConfig{HashAPIKeys: true})
	c, err := l.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 1, 10, time.Now()))
	require.NoError(t, err)
	assert.Equal(t, "key-c-0123456789", c.APIKey, "shown once")
	stored := store.get("c")
	assert.Empty(t, stored.APIKey)
	assert.Equal(t, "key-c-", stored.KeyPrefix)
	got, err := l.GetClient(t.Context(), "c")
	require.NoError(t, err)
	assert.Empty(t, got.APIKey)
}

func TestIdleClientIsEvictedAfterTTLWithItsStateKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		require.NoError(t, store.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 0.001, 10, time.Now())))
		l := startLimiter(t, store, LimiterConfig{CacheTTL: time.Minute, RemoveStaleInterval: 10 * time.Second, Shards: 1})
		_, err := l.Admit(t.Context(), "key-c-0123456789")
		require.NoError(t, err)
		time.Sleep(75 * time.Second) // fake time: past TTL and a sweep
		synctest.Wait()

		assert.Zero(t, l.CachedClients(), "evicted")

		assert.InDelta(t, 10, store.get("c").Tokens, 1e-9, "not saved yet")

		// Before the persister saved it: the reload resumes from the
		// evicted state, not the store's full bucket.
		d, err := l.Admit(t.Context(), "key-c-0123456789")
		require.NoError(t, err)
		assert.Equal(t, int64(2), store.keyLoads.Load(), "reloaded on its next request")
		assert.Equal(t, int64(8), d.Remaining)
	})
}

func TestRefillTickRefreshesEveryBucket(t *testing.T) {
	s := newShard(&limiterConfig{}, discard)
	c := newClient("c", "key-c-0123456789", 2, 10, time.Unix(0, 0))
	c.Tokens = 0
	e := s.install(c, newBucket(c), 0)
	s.refillAll(3 * sec)
	assert.InDelta(t, 6, e.b.tokens, 1e-9)
	assert.False(t, e.dirty, "a refill alone needs no save")
}

func TestLimiterShutdown(t *testing.T) {
	store := newMemStore()
	require.NoError(t, store.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 1, 10, time.Now())))
	l, err := NewLimiter(t.Context(), LimiterConfig{}, store, discard)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	_, err = l.Admit(t.Context(), "key-c-0123456789")
	require.NoError(t, err)

	cancel()
	require.NoError(t, <-done)
	_, err = l.Admit(t.Context(), "key-c-0123456789")
	require.ErrorIs(t, err, messages.ErrStopped)
	_, err = l.GetClient(t.Context(), "c")
	require.ErrorIs(t, err, messages.ErrStopped)
}

func TestAdmitWithADoneContextQueuesNothing(t *testing.T) {
	store := newMemStore()
	require.NoError(t, store.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 1, 10, time.Now())))
	l, err := NewLimiter(t.Context(), LimiterConfig{Shards: 1}, store, discard)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = l.Admit(ctx, "key-c-0123456789") // Run is not even running
	require.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, len(l.shards[0].admitc))
}

// Admit waits for its answer without watching ctx or the shard's done
// channel, so every request a shard queued must be answered even when the
// shard stops mid-flight: callers with no deadline must all come back.
func TestAdmitUnderLoadReturnsWhenTheLimiterStops(t *testing.T) {
	store := newMemStore()
	keys := make([]string, 16)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%02d-0123456789abcdef", i)
		require.NoError(t, store.CreateClient(t.Context(), newClient(fmt.Sprint("c", i), keys[i], 1e9, 1e9, time.Now())))
	}
	for round := range 20 {
		l, err := NewLimiter(t.Context(), LimiterConfig{Shards: 1 + round%4}, store, discard)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()

		var admitted, stopped atomic.Int64
		var wg sync.WaitGroup
		for g := range 64 {
			wg.Go(func() {
				for i := g; ; i++ {
					_, err := l.Admit(context.Background(), keys[i%len(keys)])
					if errors.Is(err, messages.ErrStopped) {
						stopped.Add(1)
						return
					}
					if !assert.NoError(t, err) {
						return
					}
					admitted.Add(1)
				}
			})
		}
		require.Eventually(t, func() bool { return admitted.Load() >= 500 },
			30*time.Second, time.Millisecond, "round %d: admissions under way", round)
		cancel()
		require.NoError(t, <-done)
		returned := make(chan struct{})
		go func() { wg.Wait(); close(returned) }()
		select {
		case <-returned:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Admit callers still blocked after the limiter stopped", round)
		}
		assert.Equal(t, int64(64), stopped.Load())
	}
}

func TestSweepHandsEvictedStateToTheNextCollect(t *testing.T) {
	s := newShard(&limiterConfig{cacheTTL: time.Minute}, discard)
	for _, id := range []string{"busy", "idle-changed", "idle-unchanged"} {
		c := newClient(id, "key-"+id+"-0123456789", 1, 10, time.Unix(0, 0))
		s.install(c, newBucket(c), 0)
	}
	s.take(s.cache[messages.HashKey("key-idle-changed-0123456789")], 0)
	s.take(s.cache[messages.HashKey("key-busy-0123456789")], 50*sec)

	s.sweep(70 * sec)
	assert.Len(t, s.cache, 1, "only the busy client stays")
	got := s.collect()
	ids := []string{}
	for _, st := range got.states {
		ids = append(ids, st.ClientID)
	}
	assert.ElementsMatch(t, []string{"idle-changed", "busy"}, ids, "changed states, evicted or not; the unchanged one needs no save")
}
