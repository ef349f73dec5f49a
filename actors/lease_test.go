package actors

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

const ms = int64(time.Millisecond)

func testPolicy() leasePolicy { return newLeasePolicy(5*time.Second, 10*time.Second) }

func TestLeasePolicyDefaults(t *testing.T) {
	p := testPolicy()
	assert.Equal(t, int64(5*time.Second), p.ttl)
	assert.Equal(t, int64(500*time.Millisecond), p.margin)
	assert.Equal(t, int64(2500*time.Millisecond), p.refresh, "half the ttl, so a lease is renewed before it expires")
	assert.Equal(t, int64(time.Second), newLeasePolicy(5*time.Second, time.Second).refresh, "save_state_interval bounds reports")
}

func TestLeaseDemandAverage(t *testing.T) {
	p := testPolicy()
	var l lease
	for range 10 {
		l.arrive(&p, 1000*ms)
	}
	assert.InDelta(t, 10, l.decayed(&p, 1000*ms), 1e-9)
	assert.InDelta(t, 10/2.718281828, l.decayed(&p, 2000*ms), 1e-6, "decays with a time constant of one window")
	assert.InDelta(t, 10, l.decayed(&p, 500*ms), 1e-9, "a time before the last arrival decays nothing")
	assert.InDelta(t, 10/2.718281828/(1-1/2.718281828), l.demandAt(&p, 2000*ms), 1e-6,
		"a young average is read up by the weight it has gathered")

	// A steady 20/s from nothing reads about right within a quarter second.
	l = lease{}
	for i := range 200 {
		l.arrive(&p, int64(i)*50*ms)
		if i == 5 || i == 199 {
			assert.InDelta(t, 20, l.demandAt(&p, int64(i)*50*ms), 5, "after %d arrivals", i+1)
		}
	}
	// After a long pause demand starts over.
	l.arrive(&p, 60_000*ms)
	assert.Equal(t, int64(60_000*ms), l.since)
}

func TestLeaseTake(t *testing.T) {
	l := lease{held: 1.5, expires: 100 * ms}
	assert.True(t, l.take(10*ms))
	assert.False(t, l.take(20*ms), "half a token is not a token")
	l = lease{held: 5, expires: 100 * ms}
	assert.False(t, l.take(100*ms), "an expired lease spends nothing")
	assert.Zero(t, l.held, "and its tokens are gone")
}

func TestLeaseNeedRenewal(t *testing.T) {
	p := testPolicy()
	busy := func(l lease) lease {
		l.demand, l.arrived, l.used, l.sentAt, l.expires = 10, 1000*ms, 1000*ms, 900*ms, 5000*ms
		return l
	}
	tests := []struct {
		name    string
		l       lease
		now     int64
		waiting bool
		want    int
	}{
		{"a request waits for the first lease", lease{}, 0, true, renewUrgent},
		{"single flight", lease{inflight: true}, 0, true, renewNone},
		{"a failed renewal pauses retries", lease{retryAt: 50 * ms}, 10 * ms, true, renewNone},
		{"the store said no token before then", lease{denyUntil: 50 * ms}, 10 * ms, true, renewNone},
		{"deny-until over, demand still there", busy(lease{denyUntil: 50 * ms}), 1010 * ms, false, renewSoon},
		{"plenty held", busy(lease{held: 8, lastGrant: 10}), 1010 * ms, false, renewNone},
		{"below a tenth of the last grant", busy(lease{held: 0.9, lastGrant: 10}), 1010 * ms, false, renewSoon},
		{"below demand times latency", busy(lease{held: 3, lastGrant: 10, latency: 500 * ms}), 1010 * ms, false, renewSoon},
		{"unused for a second: hand back", busy(lease{held: 8, lastGrant: 10}), 2000 * ms, false, renewSoon},
		{"due for a report", lease{held: 5, lastGrant: 10, demand: 1, arrived: 3300 * ms, used: 3300 * ms, sentAt: 900 * ms, expires: 5000 * ms}, 900*ms + p.refresh, false, renewSoon},
		{"not yet due for a report", lease{held: 5, lastGrant: 10, demand: 1, arrived: 3300 * ms, used: 3300 * ms, sentAt: 900 * ms, expires: 5000 * ms}, 800*ms + p.refresh, false, renewNone},
		{"empty and idle: nothing to do", lease{arrived: 0, sentAt: 0}, 5000 * ms, false, renewNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.l.needRenewal(&p, tt.now, tt.waiting))
		})
	}
}

func TestLeaseWant(t *testing.T) {
	p := testPolicy()
	tests := []struct {
		name     string
		demand   float64
		held     float64
		capacity int64
		want     float64
	}{
		{"a second of demand", 50, 0, 100, 50},
		{"minus what is held", 50, 20.5, 100, 30},
		{"at least one", 0, 0, 100, 1},
		{"at least one even when held covers demand", 5, 10, 100, 1},
		{"never above capacity and a window's refill", 500, 0, 100, 120},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := lease{demand: tt.demand, since: -100_000 * ms, held: tt.held}
			assert.Equal(t, tt.want, l.want(&p, 0, tt.capacity, 20))
		})
	}
}

func TestLeaseRenewalAndGrant(t *testing.T) {
	p := testPolicy()
	l := lease{}
	l.arrive(&p, 0)
	r := l.renewal(&p, 1*ms, 7, 100, 20)
	assert.Equal(t, messages.LeaseRenewal{Seq: 7, Want: 5, Ahead: 250 * time.Millisecond, WantAhead: 2}, r, "one request, read as 4.5 per second")
	require.True(t, l.inflight)

	l.granted(&p, 3*ms, messages.LeaseGrant{Applied: true, Granted: 5})
	assert.False(t, l.inflight)
	assert.Equal(t, 5.0, l.held)
	assert.Equal(t, 1*ms+p.ttl-p.margin, l.expires, "the expiry clock started when the renewal was sent")
	assert.Equal(t, 2*ms, l.latency)
	assert.Equal(t, 5.0, l.lastGrant)

	// Two spent while the next renewal is out: the grant is relative to
	// what was reported.
	r = l.renewal(&p, 10*ms, 8, 100, 20)
	assert.Equal(t, 5.0, r.Outstanding)
	require.True(t, l.take(11*ms))
	require.True(t, l.take(12*ms))
	l.granted(&p, 13*ms, messages.LeaseGrant{Applied: true, Granted: -4})
	assert.Zero(t, l.held, "a lease that shrank below what was spent holds nothing")
}

func TestLeaseGrantDenied(t *testing.T) {
	p := testPolicy()
	l := lease{}
	l.renewal(&p, 100*ms, 1, 10, 20)
	l.granted(&p, 102*ms, messages.LeaseGrant{Applied: true, NextToken: 300 * time.Millisecond})
	assert.Equal(t, 400*ms, l.denyUntil, "cached from when the renewal was sent")
	assert.True(t, l.denied(399*ms))
	assert.False(t, l.denied(400*ms))
}

func TestLeaseGrantTooLate(t *testing.T) {
	p := testPolicy()
	l := lease{}
	l.renewal(&p, 0, 1, 10, 20)
	l.granted(&p, p.ttl, messages.LeaseGrant{Applied: true, Granted: 5})
	assert.Zero(t, l.held, "an answer arriving after the margin is as good as expired")
}

func TestLeaseIdleHandback(t *testing.T) {
	p := testPolicy()
	l := lease{held: 7, expires: 5000 * ms, used: 0, arrived: 0}
	r := l.renewal(&p, 1000*ms, 2, 10, 20)
	assert.Equal(t, messages.LeaseRenewal{Seq: 2, Handback: 7}, r)
	assert.Zero(t, l.held)
}

func TestLeaseFailedRenewal(t *testing.T) {
	p := testPolicy()
	l := lease{held: 7, expires: 5000 * ms}
	l.renewal(&p, 1000*ms, 2, 10, 20) // idle: hands 7 back
	l.failed(1100 * ms)
	assert.False(t, l.inflight)
	assert.Zero(t, l.held, "a handback whose fate is unknown counts as given")
	assert.Equal(t, 1100*ms+leaseRetry, l.retryAt)
	assert.Equal(t, 5000*ms, l.expires, "the old expiry stands")
}

func TestLeaseStaleGrantChangesNothing(t *testing.T) {
	p := testPolicy()
	l := lease{held: 3, expires: 5000 * ms, used: 900 * ms, arrived: 900 * ms}
	l.renewal(&p, 1000*ms, 2, 10, 20)
	l.granted(&p, 1001*ms, messages.LeaseGrant{Applied: false})
	assert.Equal(t, 3.0, l.held)
	assert.Equal(t, 5000*ms, l.expires)
}

// TestLeaseScheduledTokensFallDueInOrder: tokens scheduled ahead are
// spent one by one at their times, never before, and a request before the
// next one is refused with its time, without asking the store.
func TestLeaseScheduledTokensFallDueInOrder(t *testing.T) {
	p := testPolicy()
	l := lease{}
	l.arrive(&p, 0)
	l.renewal(&p, 0, 1, 10, 100)
	l.granted(&p, 1*ms, messages.LeaseGrant{Applied: true, Granted: 3, Scheduled: 3,
		FirstDue: 5 * time.Millisecond, RatePerSec: 100, Capacity: 10, Holders: 1})
	assert.Equal(t, 0.0, l.held)
	assert.Equal(t, 3.0, l.total(), "the store counts them as leased")
	assert.False(t, l.take(5*ms), "due 5 ms after the reply, not after the send")
	assert.True(t, l.denied(5*ms))
	assert.Equal(t, 6*ms, l.nextToken())
	assert.True(t, l.take(6*ms))
	assert.False(t, l.take(15*ms), "one every 10 ms at 100/s")
	assert.Equal(t, 16*ms, l.nextToken())
	assert.True(t, l.take(30*ms))
	assert.True(t, l.take(30*ms), "both due by then")
	assert.False(t, l.take(30*ms))
	assert.Zero(t, l.total())
	assert.False(t, l.denied(30*ms), "nothing scheduled: ask the store")
}

// TestLeaseScheduledGrantsMerge: a second run of scheduled tokens merges
// with the first into one that is never early for either.
func TestLeaseScheduledGrantsMerge(t *testing.T) {
	tests := []struct {
		name         string
		first, step  int64 // the new run
		wantAt       int64
		wantStep     int64
		wantSchedule float64
	}{
		{"contiguous", 120 * ms, 10 * ms, 100 * ms, 10 * ms, 5},
		{"overlapping: the old run keeps its times", 115 * ms, 10 * ms, 100 * ms, 10 * ms, 5},
		{"after a gap: the whole run moves later", 130 * ms, 10 * ms, 110 * ms, 10 * ms, 5},
		{"a slower rate: the slower step", 120 * ms, 20 * ms, 100 * ms, 20 * ms, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := lease{sched: 2, schedAt: 100 * ms, step: 10 * ms}
			l.schedule(tt.first, tt.step, 3)
			assert.Equal(t, tt.wantSchedule, l.sched)
			assert.Equal(t, tt.wantAt, l.schedAt)
			assert.Equal(t, tt.wantStep, l.step)
			// Never early: the k-th token of the merged run is due no
			// sooner than in the run it came from.
			for k := range 5 {
				due := l.schedAt + int64(k)*l.step
				if k < 2 {
					assert.GreaterOrEqual(t, due, 100*ms+int64(k)*10*ms, "old token %d", k)
				} else {
					assert.GreaterOrEqual(t, due, tt.first+int64(k-2)*tt.step, "new token %d", k-2)
				}
			}
		})
	}
}

// TestLeaseScheduledShrinkAndCool: a lease the store shrank loses its
// scheduled tokens first; scheduled tokens nobody asks for go back.
func TestLeaseScheduledShrinkAndCool(t *testing.T) {
	p := testPolicy()
	l := lease{held: 2, sched: 3, schedAt: 50 * ms, step: 10 * ms, expires: p.ttl}
	l.arrive(&p, 0)
	l.renewal(&p, 0, 1, 10, 100)
	l.granted(&p, 1*ms, messages.LeaseGrant{Applied: true, Granted: -4, RatePerSec: 100})
	assert.Equal(t, 0.0, l.sched, "the latest tokens go first")
	assert.Equal(t, 1.0, l.held)

	// A busy client (100 requests in a tenth of a second) cools after
	// cool; one seen seldom, after three of its gaps.
	l = lease{sched: 3, schedAt: 500 * ms, step: 10 * ms, expires: p.ttl, seq: 1}
	for i := range int64(100) {
		l.arrive(&p, i*ms)
	}
	quiet := l.arrived + p.cool
	assert.Equal(t, renewSoon, l.needRenewal(&p, quiet, false), "cooled")
	r := l.renewal(&p, quiet, 2, 10, 100)
	assert.Equal(t, 3.0, r.Handback)
	assert.Zero(t, r.Want, "it asks for nothing")
	assert.Zero(t, l.total())
}

func TestLeaseSeldomClientCoolsAfterThreeGaps(t *testing.T) {
	p := testPolicy()
	l := lease{sched: 3, schedAt: 500 * ms, step: 10 * ms, expires: p.ttl}
	for i := range int64(10) {
		l.arrive(&p, i*100*ms) // ten a second
	}
	assert.False(t, l.cooled(&p, l.arrived+p.cool), "a gap is 100 ms here")
	assert.False(t, l.cooled(&p, l.arrived+250*ms))
	assert.True(t, l.cooled(&p, l.arrived+350*ms), "three gaps and then some")
	assert.True(t, l.cooled(&p, l.arrived+p.idle))
}

// TestLeaseDueTokensCappedAtCapacity: due tokens nobody spent fill the
// lease up to the capacity; the rest are lost, as refill into a full
// bucket is.
func TestLeaseDueTokensCappedAtCapacity(t *testing.T) {
	p := testPolicy()
	l := lease{}
	l.arrive(&p, 0)
	l.renewal(&p, 0, 1, 10, 100)
	l.granted(&p, 0, messages.LeaseGrant{Applied: true, Granted: 20, Scheduled: 20,
		FirstDue: 10 * time.Millisecond, RatePerSec: 100, Capacity: 10, Holders: 2})
	// All twenty due by 200 ms; nothing spent until then.
	admitted := 0
	for l.take(250 * ms) {
		admitted++
	}
	assert.Equal(t, 10, admitted, "capacity 10")
	assert.Zero(t, l.total(), "the others are gone, not kept for later")
}
