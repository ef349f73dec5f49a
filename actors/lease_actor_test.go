package actors

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

func TestLeasedAdmissionIsDecidedInMemory(t *testing.T) {
	s := startLeased(t, "safe")
	key := s.client(t, "a", 0.001, 100)
	assert.Equal(t, 50, s.admitN(t, key, 50))
	// The first request waited for a lease; the lease then grew with
	// demand: a handful of renewals for fifty decisions.
	assert.LessOrEqual(t, s.leases.calls.Load(), int64(10))
	assert.GreaterOrEqual(t, s.leases.total("a"), 50.0, "spending not reported yet still counts as leased")
	assert.Positive(t, s.l.cfg.lease.decided.Load())
	s.stop()
	assert.InDelta(t, 50, s.leases.total("a"), 0.01, "once handed back: capacity minus admitted")
}

func TestLeasedOverLimitClientCostsTheStoreNothing(t *testing.T) {
	s := startLeased(t, "safe")
	key := s.client(t, "a", 0.001, 3)
	assert.Equal(t, 3, s.admitN(t, key, 3))
	calls := s.leases.calls.Load()
	assert.Zero(t, s.admitN(t, key, 100), "the bucket is empty")
	// One renewal learns the row is empty and when its next token comes
	// (in about 1000 s); the refusals after it never ask again.
	assert.LessOrEqual(t, s.leases.calls.Load()-calls, int64(2))
	d, err := s.l.Admit(context.Background(), key)
	require.NoError(t, err)
	assert.False(t, d.Allowed)
	assert.Greater(t, d.RetryAfter, 100*time.Second, "Retry-After from the store's next token")
}

func TestLeasedStoreDownPolicies(t *testing.T) {
	tests := []struct {
		policy  string
		admit   int // of 10, capacity 5
		wantErr error
	}{
		{"safe", 5, nil}, // alone: the whole bucket, as with the embedded store
		{"open", 10, nil},
		{"closed", 0, messages.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			s := startLeased(t, tt.policy)
			s.leases.down.Store(true)
			key := s.client(t, "a", 0.001, 5)
			ok := 0
			for range 10 {
				d, err := s.l.Admit(context.Background(), key)
				if tt.wantErr != nil {
					require.ErrorIs(t, err, tt.wantErr)
					continue
				}
				require.NoError(t, err)
				if d.Allowed {
					ok++
				}
			}
			assert.Equal(t, tt.admit, ok)
		})
	}
}

// TestLeasedSafeModeDebtIsPaid: admissions made while the store was away
// are charged to the row once it is back, so one instance ends where its
// bucket would have.
func TestLeasedSafeModeDebtIsPaid(t *testing.T) {
	s := startLeased(t, "safe")
	key := s.client(t, "a", 0.001, 20)
	require.Equal(t, 4, s.admitN(t, key, 4))
	s.leases.down.Store(true)
	require.Equal(t, 16, s.admitN(t, key, 30), "what is left of the bucket, no more")
	s.leases.down.Store(false)
	s.stop() // hands back, reporting the debt if not yet done
	assert.InDelta(t, 0, s.leases.total("a"), 0.5, "20 admitted of 20: the row is empty")
}

func TestLeaserHandsBackAtShutdown(t *testing.T) {
	s := startLeased(t, "safe")
	key := s.client(t, "a", 0.001, 100)
	require.Equal(t, 30, s.admitN(t, key, 30))
	s.stop()
	rs := s.leases.renewals()
	require.NotEmpty(t, rs)
	last := rs[len(rs)-1]
	assert.Zero(t, last.Want, "the last renewal asks for nothing")
	assert.Zero(t, last.Outstanding)
	assert.InDelta(t, 70, s.leases.total("a"), 0.5)
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	assert.Empty(t, s.leases.rows["a"].leases, "no lease left behind")
}

// TestLeasedWaitIsBoundedWhenTheStoreHangs: a request whose lease is
// empty waits for the renewal at most 20 ms. A store that does not answer
// may only be slow: the first such request is admitted on credit, the
// next refused. Once the renewal times out, the store is down, and the
// store-down policy decides: alone, the whole bucket.
func TestLeasedWaitIsBoundedWhenTheStoreHangs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := startLeased(t, "safe")
		key := s.client(t, "a", 0.001, 5)
		s.leases.hang.Store(true)
		begun := time.Now()
		d, err := s.l.Admit(context.Background(), key)
		require.NoError(t, err)
		assert.True(t, d.Allowed, "one token on credit: %+v", d)
		assert.LessOrEqual(t, time.Since(begun), 25*time.Millisecond)
		d, err = s.l.Admit(context.Background(), key)
		require.NoError(t, err)
		assert.False(t, d.Allowed, "one credit, not a guess at the bucket: %+v", d)
		assert.Positive(t, d.RetryAfter)

		time.Sleep(leaseRenewTimeout)
		synctest.Wait()
		require.True(t, s.l.cfg.lease.down.Load(), "the renewal timed out: the store is down")
		assert.Equal(t, 4, s.admitN(t, key, 10), "alone, safe mode holds the whole bucket, less the credit")
		s.leases.hang.Store(false)
		s.stop()
		assert.InDelta(t, 0, s.leases.total("a"), 0.01, "five admitted of five: the credit and safe mode's four are charged")
	})
}

func TestLeaserStopsWithoutLimiterTraffic(t *testing.T) {
	s := startLeased(t, "safe")
	s.stop()
	select {
	case <-s.x.done:
	default:
		t.Fatal("Run returned but done is open")
	}
}

// TestLeasedRateRaisedClearsDenyUntil: a client refused until its next
// token under a slow rate is admitted as soon as a PATCH raises the rate,
// not when the old rate's next token would have come.
func TestLeasedRateRaisedClearsDenyUntil(t *testing.T) {
	s := startLeased(t, "safe")
	key := s.client(t, "a", 0.001, 1)
	require.Equal(t, 1, s.admitN(t, key, 3), "then denied for about 1000 s")
	rate, capacity := 1000.0, int64(1000)
	_, err := s.l.UpdateLimits(context.Background(), "a", messages.Limits{RatePerSec: &rate, Capacity: &capacity})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return s.admitN(t, key, 1) == 1 }, 5*time.Second, 10*time.Millisecond)
}

// hammer offers perSec requests a second for d, paced on the (virtual)
// clock, and returns the admitted count.
func (s *leasedSetup) hammer(t *testing.T, key string, perSec int, d time.Duration) int {
	t.Helper()
	ok := 0
	every := time.Second / time.Duration(perSec)
	for end := time.Now().Add(d); time.Now().Before(end); {
		ok += s.admitN(t, key, 1)
		time.Sleep(every)
	}
	return ok
}

// TestLeasedOverLimitRunsOnScheduledTokens: a client offered ten times its
// rate gets its rate, within one bucket's bound, from tokens scheduled
// ahead: a few renewals a second, not one per admission, and its requests
// almost never wait on the store.
func TestLeasedOverLimitRunsOnScheduledTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := startLeased(t, "safe")
		// A bucket that holds a quarter second of refill, as scheduling
		// ahead needs.
		const capacity = 30
		key := s.client(t, "a", 100, capacity)
		const run = 2 * time.Second
		admitted := s.hammer(t, key, 1000, run)
		calls := s.leases.calls.Load()
		decided, waited := s.l.cfg.lease.decided.Load(), s.l.cfg.lease.waited.Load()
		s.stop()
		bound := capacity + 100*run.Seconds() + 1
		t.Logf("admitted %d in %v (bound %.0f), %d renewals, %d of %d decisions waited", admitted, run, bound, calls, waited, decided)
		assert.LessOrEqual(t, float64(admitted), bound)
		assert.GreaterOrEqual(t, float64(admitted), 0.9*bound, "the rate is used")
		assert.LessOrEqual(t, calls, int64(40), "a few renewals a second, not one per token")
		assert.LessOrEqual(t, waited, decided/100, "requests rarely wait on the store")
	})
}

// TestLeasedLoweredRateVoidsScheduledTokens: tokens scheduled ahead at the
// old rate are given up when a PATCH lowers it; spent on their old times,
// they would admit past the new limit.
func TestLeasedLoweredRateVoidsScheduledTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := startLeased(t, "safe")
		const capacity, window = 25, 500 * time.Millisecond
		key := s.client(t, "a", 100, capacity)
		before := s.hammer(t, key, 1000, window)
		rate := 1.0
		_, err := s.l.UpdateLimits(context.Background(), "a", messages.Limits{RatePerSec: &rate})
		require.NoError(t, err)
		after := s.hammer(t, key, 1000, window)
		s.stop()
		// One bucket: its capacity, half a second at 100/s, half a second
		// at 1/s, and the token a lease may hold.
		bound := capacity + 100*window.Seconds() + rate*window.Seconds() + 1
		t.Logf("admitted %d + %d around the PATCH (bound %.1f)", before, after, bound)
		assert.LessOrEqual(t, float64(before+after), bound)
	})
}

// TestLeasedSlowStoreUnknownSharesGetOneCredit: a store slower than the 20 ms a
// request waits for its renewal. Four instances start serving a client
// offered a hundred times its rate; until the store has answered them,
// none knows how many hold the client, so a request that waits too long
// gets one token on credit, then refusals, not a local share of the row
// as each last loaded it (full: four buckets). Admissions stay within one
// bucket's bound, plus what the store-down policy adds once their shares
// are known: each instance's share of the bucket (capacity in all).
func TestLeasedSlowStoreUnknownSharesGetOneCredit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		leases := newModelLeases(store)
		const (
			n        = 4
			rate     = 5
			capacity = 20
			run      = 3 * time.Second
			window   = time.Second
		)
		ins := make([]*leasedSetup, n)
		for i := range ins {
			ins[i] = startLeasedOn(t, "safe", store, leases)
		}
		key := ins[0].client(t, "a", rate, capacity)
		for _, s := range ins[1:] {
			// It learns the key as its periodic resync would.
			require.NoError(t, s.l.Resync(context.Background(), false))
		}
		leases.delay.Store(int64(60 * time.Millisecond))
		var (
			mu    sync.Mutex
			times []time.Time
			wg    sync.WaitGroup
		)
		for _, s := range ins {
			wg.Go(func() {
				for end := time.Now().Add(run); time.Now().Before(end); time.Sleep(time.Second / (100 * rate / n)) {
					if s.admitN(t, key, 1) == 1 {
						mu.Lock()
						times = append(times, time.Now())
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		down := ins[0].l.cfg.lease.down.Load()
		for _, s := range ins {
			s.stop()
		}
		slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
		worst, j := 0, 0
		for i := range times {
			for j < len(times) && times[j].Sub(times[i]) <= window {
				j++
			}
			worst = max(worst, j-i)
		}
		bound := capacity + rate*window.Seconds() + n + capacity
		t.Logf("admitted %d in %v; at most %d in a %v window (bound %.0f)", len(times), run, worst, window, bound)
		assert.LessOrEqual(t, float64(worst), bound)
		assert.False(t, down, "a slow store is not a store that is down")
	})
}
