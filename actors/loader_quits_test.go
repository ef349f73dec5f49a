package actors

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// quitAtOnce is a context that is already done but answers Err with nil
// the first time, so Admit gets past its opening check and gives up in
// its first wait, racing the shard's "load" reply.
type quitAtOnce struct {
	context.Context
	done  chan struct{}
	calls atomic.Int32
}

func newQuitAtOnce() *quitAtOnce {
	c := &quitAtOnce{Context: context.Background(), done: make(chan struct{})}
	close(c.done)
	return c
}

func (c *quitAtOnce) Done() <-chan struct{} { return c.done }

func (c *quitAtOnce) Err() error {
	if c.calls.Add(1) == 1 {
		return nil
	}
	return context.Canceled
}

// A request chosen to load its client that gives up at that very moment
// must not leave the key's pending load behind: the key would then hang
// every later request on this instance until a restart.
func TestLoaderThatGivesUpLeavesNoKeyStuck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 200
		store := newMemStore()
		for i := range n {
			c := newClient(fmt.Sprintf("c%03d", i), fmt.Sprintf("key-stuck-%03d-0123456789", i), 1, 5, time.Now())
			require.NoError(t, store.CreateClient(t.Context(), c))
		}
		l := startLimiter(t, store, LimiterConfig{})
		for i := range n {
			key := fmt.Sprintf("key-stuck-%03d-0123456789", i)
			_, _ = l.Admit(newQuitAtOnce(), key) // gives up at once, or is served
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			d, err := l.Admit(ctx, key)
			cancel()
			require.NoError(t, err, "key %d stuck after its loader gave up", i)
			assert.True(t, d.Allowed)
		}
	})
}

// An admin write queued behind another on the same client's stripe can be
// cancelled: its caller is not held until the slow write ends.
func TestAdminOrderLockFollowsItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := newAdminOrder()
		unlock, err := o.lock(t.Context(), "c")
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err = o.lock(ctx, "c")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		unlock()
		again, err := o.lock(t.Context(), "c")
		require.NoError(t, err)
		again()
	})
}
