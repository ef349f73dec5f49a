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

// Issue 11 item 1: admin changes to one client reach the shards in the
// order the store committed them. Each case holds the first change right
// after its store write, lets the second one run as far as it can, then
// lets the first finish; the cache must end up as the store has it.

// holdAfter makes the next store write of op wait until release is closed;
// reached is closed when it starts waiting.
func holdAfter(store *memStore, op string) (reached, release chan struct{}) {
	reached, release = make(chan struct{}), make(chan struct{})
	held := false
	store.afterWrite = func(o, _ string) {
		if o == op && !held {
			held = true
			close(reached)
			<-release
		}
	}
	return reached, release
}

// interleave runs first until its store write is held, then second in
// the background, waits until every goroutine is blocked, releases first
// and waits for both.
func interleave(t *testing.T, store *memStore, op string, first, second func() error) {
	t.Helper()
	reached, release := holdAfter(store, op)
	errs := make(chan error, 2)
	go func() { errs <- first() }()
	<-reached
	go func() { errs <- second() }()
	synctest.Wait()
	close(release)
	for range 2 {
		require.NoError(t, <-errs)
	}
}

const (
	orderKey    = "key-order-0123456789"
	orderNewKey = "key-order-new-0123456789"
)

func TestAdminChangesReachTheCacheInStoreOrder(t *testing.T) {
	capOf := func(n int64) messages.Limits { return messages.Limits{Capacity: &n} }
	tests := []struct {
		name string
		// setup runs first, with the client "c" (key orderKey, capacity
		// 10) created unless it says otherwise.
		noClient bool
		op       string
		first    func(ctx context.Context, l *Limiter) error
		second   func(ctx context.Context, l *Limiter) error
		check    func(t *testing.T, l *Limiter, store *memStore)
	}{
		{
			name: "delete racing create", noClient: true, op: "create",
			first: func(ctx context.Context, l *Limiter) error {
				_, err := l.CreateClient(ctx, newClient("c", orderKey, 1, 10, time.Now()))
				return err
			},
			second: func(ctx context.Context, l *Limiter) error { return l.DeleteClient(ctx, "c") },
			check: func(t *testing.T, l *Limiter, store *memStore) {
				_, err := l.Admit(t.Context(), orderKey)
				assert.ErrorIs(t, err, messages.ErrUnknownKey, "a deleted client's key still admits")
			},
		},
		{
			name: "delete racing rotate-key", op: "rotate",
			first: func(ctx context.Context, l *Limiter) error {
				_, err := l.RotateKey(ctx, "c", orderNewKey)
				return err
			},
			second: func(ctx context.Context, l *Limiter) error { return l.DeleteClient(ctx, "c") },
			check: func(t *testing.T, l *Limiter, store *memStore) {
				for _, k := range []string{orderKey, orderNewKey} {
					_, err := l.Admit(t.Context(), k)
					assert.ErrorIs(t, err, messages.ErrUnknownKey, "key %s of a deleted client admits", k)
				}
			},
		},
		{
			name: "patch racing patch", op: "limits",
			first: func(ctx context.Context, l *Limiter) error {
				_, err := l.UpdateLimits(ctx, "c", capOf(20))
				return err
			},
			second: func(ctx context.Context, l *Limiter) error {
				_, err := l.UpdateLimits(ctx, "c", capOf(7))
				return err
			},
			check: func(t *testing.T, l *Limiter, store *memStore) {
				d, err := l.Admit(t.Context(), orderKey)
				require.NoError(t, err)
				assert.Equal(t, store.get("c").Capacity, d.Limit)
			},
		},
		{
			name: "patch racing rotate-key", op: "rotate",
			first: func(ctx context.Context, l *Limiter) error {
				_, err := l.RotateKey(ctx, "c", orderNewKey)
				return err
			},
			second: func(ctx context.Context, l *Limiter) error {
				_, err := l.UpdateLimits(ctx, "c", capOf(3))
				return err
			},
			check: func(t *testing.T, l *Limiter, store *memStore) {
				d, err := l.Admit(t.Context(), orderNewKey)
				require.NoError(t, err)
				assert.Equal(t, int64(3), d.Limit)
			},
		},
		{
			name: "echo of own rotation before its shard update", op: "rotate",
			first: func(ctx context.Context, l *Limiter) error {
				_, err := l.RotateKey(ctx, "c", orderNewKey)
				return err
			},
			second: func(ctx context.Context, l *Limiter) error {
				return l.ApplyChange(ctx, messages.Change{ClientID: "c",
					KeyHash: messages.HashKey(orderNewKey), OldKeyHash: messages.HashKey(orderKey)})
			},
			check: func(t *testing.T, l *Limiter, store *memStore) {
				d, err := l.Admit(t.Context(), orderNewKey)
				require.NoError(t, err)
				assert.Equal(t, int64(4), d.Remaining, "5 of 10 spent before, 1 now: spent tokens handed out again")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := newMemStore()
				l := startLimiter(t, store, LimiterConfig{})
				ctx := t.Context()
				if !tt.noClient {
					_, err := l.CreateClient(ctx, newClient("c", orderKey, 1e-6, 10, time.Now()))
					require.NoError(t, err)
					for range 5 {
						_, err := l.Admit(ctx, orderKey)
						require.NoError(t, err)
					}
				}
				interleave(t, store, tt.op,
					func() error { return tt.first(ctx, l) },
					func() error { return tt.second(ctx, l) })
				store.afterWrite = nil
				tt.check(t, l, store)
			})
		})
	}
}
