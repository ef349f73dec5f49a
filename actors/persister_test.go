package actors

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// startPersister runs a Persister until the test ends; stop cancels it and
// waits, so a test can check the final flush.
func startPersister(t *testing.T, l *Limiter, store *memStore, cfg PersisterConfig) (p *Persister, stop func()) {
	t.Helper()
	p = NewPersister(cfg, l, store, discard)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return p, stop
}

func TestPersisterSavesOnlyChangedClientsEachInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		var batches [][]messages.BucketState
		store.saveCalls = func(s []messages.BucketState) { batches = append(batches, s) }
		l := startLimiter(t, store, LimiterConfig{})
		for _, id := range []string{"a", "b", "idle"} {
			_, err := l.CreateClient(t.Context(), newClient(id, "key-"+id+"-0123456789", 0.001, 10, time.Now()))
			require.NoError(t, err)
		}
		startPersister(t, l, store, PersisterConfig{Interval: 10 * time.Second})
		for range 3 {
			_, err := l.Admit(t.Context(), "key-a-0123456789")
			require.NoError(t, err)
		}
		_, err := l.Admit(t.Context(), "key-b-0123456789")
		require.NoError(t, err)

		time.Sleep(10*time.Second + time.Millisecond)
		synctest.Wait()
		require.Len(t, batches, 1, "one batch per interval")
		assert.Len(t, batches[0], 2, "only the clients that changed")
		assert.InDelta(t, 7, store.get("a").Tokens, 0.1)
		assert.InDelta(t, 9, store.get("b").Tokens, 0.1)

		time.Sleep(10 * time.Second)
		synctest.Wait()
		assert.Len(t, batches, 1, "nothing changed, nothing written")
	})
}

func TestPersisterRetriesAfterOutageWithLatestValues(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		l := startLimiter(t, store, LimiterConfig{})
		_, err := l.CreateClient(t.Context(), newClient("a", "key-a-0123456789", 0.001, 10, time.Now()))
		require.NoError(t, err)
		startPersister(t, l, store, PersisterConfig{Interval: time.Second})

		store.down.Store(true)
		for range 4 {
			_, err := l.Admit(t.Context(), "key-a-0123456789")
			require.NoError(t, err, "admission does not need the store")
			time.Sleep(time.Second)
			synctest.Wait()
		}
		assert.InDelta(t, 10, store.get("a").Tokens, 1e-9, "nothing written while down")

		store.down.Store(false)
		time.Sleep(time.Second)
		synctest.Wait()
		assert.InDelta(t, 6, store.get("a").Tokens, 0.1, "the latest value reached the store")
	})
}

func TestPersisterNeverWritesBackADeletedClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		var saved []string
		store.saveCalls = func(s []messages.BucketState) {
			for _, st := range s {
				saved = append(saved, st.ClientID)
			}
		}
		l := startLimiter(t, store, LimiterConfig{})
		_, err := l.CreateClient(t.Context(), newClient("gone", "key-gone-0123456789", 1, 10, time.Now()))
		require.NoError(t, err)
		p, _ := startPersister(t, l, store, PersisterConfig{Interval: time.Hour})
		_, err = l.Admit(t.Context(), "key-gone-0123456789")
		require.NoError(t, err)

		store.down.Store(true)
		require.Error(t, p.Flush(t.Context()), "the state stays pending")
		store.down.Store(false)
		require.NoError(t, l.DeleteClient(t.Context(), "gone"))
		// Created again, with another key: its state is its own.
		_, err = l.CreateClient(t.Context(), newClient("gone", "key-again-0123456789", 1, 10, time.Now()))
		require.NoError(t, err)

		require.NoError(t, p.Flush(t.Context()))
		assert.Empty(t, saved, "the old state was dropped with the delete")
		assert.InDelta(t, 10, store.get("gone").Tokens, 1e-9)
	})
}

func TestPersisterFlushesAtShutdownAndBucketsResume(t *testing.T) {
	store := newMemStore()
	l, err := NewLimiter(t.Context(), LimiterConfig{}, store, discard)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	_, err = l.CreateClient(t.Context(), newClient("a", "key-a-0123456789", 0.001, 10, time.Now()))
	require.NoError(t, err)
	_, stopPersister := startPersister(t, l, store, PersisterConfig{Interval: time.Hour})
	for range 7 {
		_, err := l.Admit(t.Context(), "key-a-0123456789")
		require.NoError(t, err)
	}
	stopPersister() // the final flush needs the shards still running
	cancel()
	require.NoError(t, <-done)
	assert.InDelta(t, 3, store.get("a").Tokens, 0.1)

	// A new process on the same store resumes the bucket, not a full one.
	l2 := startLimiter(t, store, LimiterConfig{})
	d, err := l2.Admit(t.Context(), "key-a-0123456789")
	require.NoError(t, err)
	assert.Equal(t, int64(2), d.Remaining)
}

func TestPersisterShutdown(t *testing.T) {
	store := newMemStore()
	l := startLimiter(t, store, LimiterConfig{})
	p, stop := startPersister(t, l, store, PersisterConfig{})
	stop()
	require.ErrorIs(t, p.Flush(t.Context()), messages.ErrStopped)
}

// A state the persister collected but could not save yet must survive the
// bucket leaving the cache: a reload from the store's older row would give
// back tokens already spent.
func TestReloadAfterFailedSaveResumesFromUnsavedState(t *testing.T) {
	for _, tt := range []struct {
		name string
		drop func(t *testing.T, l *Limiter)
	}{
		{"resync dropping the cache", func(t *testing.T, l *Limiter) { require.NoError(t, l.Resync(t.Context(), true)) }},
		{"rotation", func(t *testing.T, l *Limiter) {
			_, err := l.RotateKey(t.Context(), "c", "key-c-0123456789")
			require.NoError(t, err)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store := newMemStore()
			l := startLimiter(t, store, LimiterConfig{})
			_, err := l.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 0.001, 10, time.Now()))
			require.NoError(t, err)
			p, _ := startPersister(t, l, store, PersisterConfig{Interval: time.Hour})
			for range 3 {
				_, err := l.Admit(t.Context(), "key-c-0123456789")
				require.NoError(t, err)
			}
			store.down.Store(true)
			require.Error(t, p.Flush(t.Context()), "collected, not saved")
			store.down.Store(false)

			tt.drop(t, l)
			d, err := l.Admit(t.Context(), "key-c-0123456789")
			require.NoError(t, err)
			assert.Equal(t, int64(6), d.Remaining, "resumed from the unsaved state, not the store's 10")

			require.NoError(t, p.Flush(t.Context()))
			assert.InDelta(t, 6, store.get("c").Tokens, 0.1)
		})
	}
}

func TestSavedStatesAreNotKeptAfterEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		l := startLimiter(t, store, LimiterConfig{CacheTTL: time.Minute, RemoveStaleInterval: 10 * time.Second, Shards: 1})
		_, err := l.CreateClient(t.Context(), newClient("c", "key-c-0123456789", 0.001, 10, time.Now()))
		require.NoError(t, err)
		p, _ := startPersister(t, l, store, PersisterConfig{Interval: time.Hour})
		_, err = l.Admit(t.Context(), "key-c-0123456789")
		require.NoError(t, err)
		require.NoError(t, p.Flush(t.Context()))

		time.Sleep(75 * time.Second)
		synctest.Wait()
		assert.Zero(t, l.CachedClients())
		reply := make(chan peekReply, 1)
		rep, err := ask(t.Context(), l.shards[0], &peekMsg{hash: messages.HashKey("key-c-0123456789"), reply: reply}, reply)
		require.NoError(t, err)
		assert.False(t, rep.cached, "saved before eviction: nothing kept")
	})
}
