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

// One test per invariant of admitReq (see its comment).

const invKey = "key-inv-0123456789"

// shardWith returns a shard, not running, that indexes invKey.
func shardWith(t *testing.T) (*shard, messages.KeyHash) {
	t.Helper()
	s := newShard(&limiterConfig{clk: newClock()}, discard)
	h := messages.HashKey(invKey)
	s.index[h.Fingerprint()] = struct{}{}
	return s, h
}

// Invariant 1: a request gets at most two replies ("load", then the
// decision), and both fit its buffer: the shard never blocks on a caller
// that has not read yet.
func TestAdmitReqInvariantTwoRepliesFitTheBuffer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, h := shardWith(t)
		r := newAdmitReq().(*admitReq)
		r.hash = h
		s.admit(r)  // "load"
		r.release() // as Limiter.load does before reporting
		c := newClient("c", invKey, 1, 10, time.Now())
		s.loaded(&loadDone{hash: h, client: c, loader: r}) // the decision, unread "load" still queued
		require.Len(t, r.reply, 2)
		assert.True(t, (<-r.reply).load)
		assert.True(t, (<-r.reply).d.Allowed)
	})
}

// Invariant 2: the shard closes done, then drains: when run returns, done
// is closed and every request queued before has its answer (a decision if
// the loop took it, else ErrStopped).
func TestAdmitReqInvariantFinalDrainAnswersTheQueue(t *testing.T) {
	s, h := shardWith(t)
	reqs := make([]*admitReq, 5)
	for i := range reqs {
		reqs[i] = newAdmitReq().(*admitReq)
		reqs[i].hash = h
		s.admitc <- reqs[i]
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, s.run(ctx))
	select {
	case <-s.done:
	default:
		t.Fatal("done still open after run returned")
	}
	for _, r := range reqs {
		assert.Len(t, r.reply, 1, "queued request left unanswered")
	}
}

// Invariant 3: a sender that finds done closed after its send drains the
// queue itself, so its request is answered even after the final drain.
func TestAdmitReqInvariantLateSenderDrains(t *testing.T) {
	s, h := shardWith(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, s.run(ctx)) // stopped, final drain over
	r := newAdmitReq().(*admitReq)
	r.hash = h
	require.NoError(t, s.enqueue(context.Background(), r))
	require.Len(t, r.reply, 1)
	assert.ErrorIs(t, (<-r.reply).err, messages.ErrStopped)
}

// Invariant 4: a request given up on is never reused: the shard may still
// hold it (queued behind a load), and would answer its next user with a
// decision for another key.
func TestAdmitReqInvariantNoReuseAfterAbandon(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const otherKey = "key-inv2-0123456789"
		store := newMemStore()
		store.loadGate = make(chan struct{})
		require.NoError(t, store.CreateClient(t.Context(), newClient("c1", invKey, 1e-6, 100, time.Now())))
		require.NoError(t, store.CreateClient(t.Context(), newClient("c2", otherKey, 1e-6, 100, time.Now())))
		l := startLimiter(t, store, LimiterConfig{Shards: 1})
		loader := make(chan error, 1)
		go func() { _, err := l.Admit(context.Background(), invKey); loader <- err }()
		synctest.Wait()
		ctx, cancel := context.WithCancel(context.Background())
		quitter := make(chan error, 1)
		go func() { _, err := l.Admit(ctx, invKey); quitter <- err }()
		synctest.Wait()
		cancel()
		require.ErrorIs(t, <-quitter, context.Canceled)

		// The next request, for another key, waits for its own load.
		other := make(chan messages.Decision, 1)
		go func() { d, _ := l.Admit(context.Background(), otherKey); other <- d }()
		synctest.Wait()
		close(store.loadGate)
		require.NoError(t, <-loader)
		assert.Equal(t, "c2", (<-other).ClientID)
	})
}

// Invariant 5: caller and shard race to claim a request; only one wins.
// Abandoned first, the shard takes no token and sends nothing; taken
// first, the caller cannot abandon it.
func TestAdmitReqInvariantClaimIsExclusive(t *testing.T) {
	s, h := shardWith(t)
	c := newClient("c", invKey, 1e-6, 10, time.Now())
	s.install(c, s.cfg.clk.bucket(c, s.cfg.clk.now()), s.cfg.clk.now())

	gone := newAdmitReq().(*admitReq)
	gone.hash = h
	require.True(t, gone.abandon())
	s.admit(gone)
	assert.Empty(t, gone.reply, "no answer to an abandoned request")
	assert.InDelta(t, 10, s.cache[h].b.tokens, 1e-6, "no token taken")

	taken := newAdmitReq().(*admitReq)
	taken.hash = h
	s.admit(taken)
	assert.False(t, taken.abandon(), "taken by the shard")
	assert.True(t, (<-taken.reply).d.Allowed)
}
