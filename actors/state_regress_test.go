package actors

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// Regression tests of issue 11, items 2 to 5 and 7.

const regKey = "key-reg-0123456789"

// collectorFuncs is a Collector of function fields.
type collectorFuncs struct {
	collect func(ctx context.Context) ([]messages.BucketState, []string, error)
}

var _ Collector = collectorFuncs{}

func (c collectorFuncs) Collect(ctx context.Context) ([]messages.BucketState, []string, error) {
	return c.collect(ctx)
}
func (collectorFuncs) Saved(context.Context, []messages.BucketState) error { return nil }

// Item 2: a shutdown that ends the persister's ctx after a shard handed
// its states over must not lose them. The collector below hands its state
// over once and, like a caller whose ctx ended, drops it if ctx is done.
func TestShutdownDuringAPeriodicSaveFlushesTheCollectedStates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		c := newClient("c", regKey, 1, 10, time.Now())
		require.NoError(t, store.CreateClient(t.Context(), c))
		ctx, cancel := context.WithCancel(context.Background())
		handed := false
		src := collectorFuncs{collect: func(cctx context.Context) ([]messages.BucketState, []string, error) {
			if handed {
				return nil, nil, nil
			}
			handed = true
			cancel() // shutdown starts while the shard answers
			if err := cctx.Err(); err != nil {
				return nil, nil, err
			}
			return []messages.BucketState{{ClientID: "c", Tokens: 9, LastRefill: time.Now()}}, nil, nil
		}}
		p := NewPersister(PersisterConfig{Interval: time.Second}, src, store, discard)
		require.NoError(t, p.Run(ctx))
		assert.InDelta(t, 9, store.get("c").Tokens, 0, "the admitted token was saved")
	})
}

// Item 2, the shard side: an answer the actor gave before it stopped wins
// over its done channel.
func TestCallPrefersAnAnswerGivenBeforeStop(t *testing.T) {
	for range 200 {
		done, ch, reply := make(chan struct{}), make(chan int, 1), make(chan int, 1)
		reply <- 7
		go func() { <-ch; close(done) }()
		got, err := call(context.Background(), done, ch, 1, reply)
		require.NoError(t, err)
		require.Equal(t, 7, got)
	}
}

// Item 3: a last_refill stored in the future (an instance whose clock runs
// ahead) counts as now: refill is not frozen until then, and saves never
// carry an older last_refill than the stored one.
func TestStoredLastRefillInTheFutureCountsAsNow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		future := time.Now().Add(time.Hour)
		c := newClient("c", regKey, 1, 10, future)
		c.Tokens = 0
		require.NoError(t, store.CreateClient(t.Context(), c))
		l := startLimiter(t, store, LimiterConfig{})
		d, err := l.Admit(t.Context(), regKey)
		require.NoError(t, err)
		require.False(t, d.Allowed)

		time.Sleep(2 * time.Second)
		d, err = l.Admit(t.Context(), regKey)
		require.NoError(t, err)
		assert.True(t, d.Allowed, "refill frozen until the stored last_refill")
		states, _, err := l.Collect(t.Context())
		require.NoError(t, err)
		require.Len(t, states, 1)
		assert.False(t, states[0].LastRefill.Before(future), "a save older than the stored state")
	})
}

// Item 3: bucket time is monotonic; the wall clock is read only to convert.
func TestBucketClockIsMonotonic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clk := newClock()
		start := clk.now()
		time.Sleep(3 * time.Second)
		assert.Equal(t, int64(3*time.Second), clk.now()-start)
		assert.Equal(t, time.Now().UTC(), clk.toWall(clk.now()))
	})
}

// Item 4: a rate change of an uncached client refills at the old rate up
// to now first, as for a cached one.
func TestRateChangeOfAnUncachedClientIsNotRetroactive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		c := newClient("c", regKey, 1, 1000, time.Now())
		c.Tokens = 0
		require.NoError(t, store.CreateClient(t.Context(), c))
		l := startLimiter(t, store, LimiterConfig{})
		time.Sleep(10 * time.Second)
		rate := 100.0
		_, err := l.UpdateLimits(t.Context(), "c", messages.Limits{RatePerSec: &rate})
		require.NoError(t, err)
		d, err := l.Admit(t.Context(), regKey)
		require.NoError(t, err)
		assert.Equal(t, int64(9), d.Remaining, "10 s at the old 1/s, minus this request")
	})
}

// Item 5: a state saved by an instance that cached a client lands only on
// that client, not on one created again with its id by another instance.
func TestStaleSaveDoesNotLandOnARecreatedClient(t *testing.T) {
	store := newMemStore()
	a := startLimiter(t, store, LimiterConfig{})
	b := startLimiter(t, store, LimiterConfig{})
	ctx := t.Context()
	_, err := a.CreateClient(ctx, newClient("x", regKey, 1e-6, 10, time.Now()))
	require.NoError(t, err)
	for range 4 {
		_, err := a.Admit(ctx, regKey)
		require.NoError(t, err)
	}
	require.NoError(t, b.DeleteClient(ctx, "x"))
	// Its last_refill is older than a's state: only the generation tells
	// the two clients apart.
	_, err = b.CreateClient(ctx, newClient("x", "key-reg2-0123456789", 1e-6, 10, time.Now().Add(-time.Minute)))
	require.NoError(t, err)

	states, _, err := a.Collect(ctx)
	require.NoError(t, err)
	require.Len(t, states, 1)
	require.NoError(t, store.SaveStates(ctx, states))
	assert.InDelta(t, 10, store.get("x").Tokens, 0, "the new x kept its own full bucket")
}

// Item 7: Admit watches its ctx while queued, even if the shard never
// answers (it does not run).
func TestAdmitReturnsWhenItsContextEndsWhileQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		require.NoError(t, store.CreateClient(t.Context(), newClient("c", regKey, 1, 10, time.Now())))
		l, err := NewLimiter(t.Context(), LimiterConfig{Shards: 1}, store, discard)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { _, err := l.Admit(ctx, regKey); errc <- err }()
		synctest.Wait()
		cancel()
		synctest.Wait()
		select {
		case err := <-errc:
			assert.ErrorIs(t, err, context.Canceled)
		default:
			t.Fatal("Admit still blocked after its ctx ended")
		}
	})
}

// Item 7: a request that gave up waiting for its client's store load
// takes no token.
func TestRequestThatGaveUpWaitingForALoadTakesNoToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		store.loadGate = make(chan struct{})
		require.NoError(t, store.CreateClient(t.Context(), newClient("c", regKey, 1e-6, 3, time.Now())))
		l := startLimiter(t, store, LimiterConfig{})

		loader := make(chan error, 1)
		go func() { _, err := l.Admit(context.Background(), regKey); loader <- err }()
		synctest.Wait()
		ctx, cancel := context.WithCancel(context.Background())
		quitter := make(chan error, 1)
		go func() { _, err := l.Admit(ctx, regKey); quitter <- err }()
		synctest.Wait()
		cancel()
		require.ErrorIs(t, <-quitter, context.Canceled)

		close(store.loadGate)
		require.NoError(t, <-loader)
		d, err := l.Admit(t.Context(), regKey)
		require.NoError(t, err)
		assert.Equal(t, int64(1), d.Remaining, "3 tokens, 2 requests served")
	})
}

// Item 7: an admin write the store committed is no failure when the
// shards have stopped (shutdown): the answer must not say "nothing
// changed".
func TestCommittedAdminWriteSucceedsAfterTheShardsStopped(t *testing.T) {
	rate := 9.0
	tests := []struct {
		name  string
		op    func(ctx context.Context, l *Limiter) error
		check func(t *testing.T, store *memStore)
	}{
		{"create", func(ctx context.Context, l *Limiter) error {
			_, err := l.CreateClient(ctx, newClient("new", "key-new-0123456789", 1, 5, time.Now()))
			return err
		}, func(t *testing.T, store *memStore) { assert.Equal(t, "new", store.get("new").ID) }},
		{"patch", func(ctx context.Context, l *Limiter) error {
			_, err := l.UpdateLimits(ctx, "c", messages.Limits{RatePerSec: &rate})
			return err
		}, func(t *testing.T, store *memStore) { assert.InDelta(t, rate, store.get("c").RatePerSec, 0) }},
		{"rotate", func(ctx context.Context, l *Limiter) error {
			_, err := l.RotateKey(ctx, "c", "key-rot-0123456789")
			return err
		}, func(t *testing.T, store *memStore) {
			assert.Equal(t, messages.HashKey("key-rot-0123456789"), store.get("c").KeyHash)
		}},
		{"delete", func(ctx context.Context, l *Limiter) error { return l.DeleteClient(ctx, "c") },
			func(t *testing.T, store *memStore) { assert.Empty(t, store.get("c").ID) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newMemStore()
			require.NoError(t, store.CreateClient(t.Context(), newClient("c", regKey, 1, 10, time.Now())))
			l, err := NewLimiter(t.Context(), LimiterConfig{}, store, discard)
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			require.NoError(t, l.Run(ctx))
			require.NoError(t, tt.op(t.Context(), l))
			tt.check(t, store)
		})
	}
}

// Item 2 end to end: the persister saving all the time (1 ms interval)
// is stopped at a random moment, 40 times; the final flush always saves
// the admitted token.
func TestShutdownAtAnyMomentOfASaveFlushesEveryToken(t *testing.T) {
	for run := range 40 {
		store := newMemStore()
		l := startLimiter(t, store, LimiterConfig{Shards: 2})
		_, err := l.CreateClient(t.Context(), newClient("c", regKey, 1e-9, 10, time.Now()))
		require.NoError(t, err)
		p := NewPersister(PersisterConfig{Interval: time.Millisecond}, l, store, discard)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		_, err = l.Admit(t.Context(), regKey)
		require.NoError(t, err)
		// Not a wait for anything: it moves the stop to a different moment
		// of the save cycle each run.
		time.Sleep(time.Duration(run%7) * 100 * time.Microsecond)
		cancel()
		require.NoError(t, <-done)
		require.InDelta(t, 9, store.get("c").Tokens, 1e-6, "run %d", run)
	}
}
