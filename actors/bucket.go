package actors

import (
	"math"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// bucket is one client's token bucket. Its methods are pure functions of
// the time passed in, so the math is tested with explicit instants; the
// shard that owns a bucket is the only one to touch it.
//
// Times are nanoseconds of bucket time (see clock), not time.Time: 8 bytes
// beat 24 for a structure kept once per cached client.
type bucket struct {
	rate     float64 // tokens per second, > 0
	capacity int64   // >= 1
	tokens   float64 // 0 <= tokens <= capacity
	last     int64   // when tokens was last brought up to date
	// stamp is the Unix ns of the stored last_refill the bucket was loaded
	// from: its saved states never carry an earlier one (see clock.state).
	stamp int64
}

// refill brings tokens up to now. A clock that went backwards adds nothing
// and keeps last, so a step back never mints tokens twice.
func (b *bucket) refill(now int64) {
	if now <= b.last {
		return
	}
	capf := float64(b.capacity)
	if b.tokens < capf {
		b.tokens += float64(now-b.last) / 1e9 * b.rate
		if b.tokens > capf {
			b.tokens = capf
		}
	}
	b.last = now
}

// take refills to now and then takes one token if there is one. A refused
// request takes nothing.
func (b *bucket) take(now int64) bool {
	b.refill(now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// setLimits changes rate and capacity as of now: tokens earned so far at
// the old rate are kept, then clamped to the new capacity.
func (b *bucket) setLimits(now int64, l messages.Limits) {
	b.refill(now)
	if l.RatePerSec != nil {
		b.rate = *l.RatePerSec
	}
	if l.Capacity != nil {
		b.capacity = *l.Capacity
		b.tokens = min(b.tokens, float64(b.capacity))
	}
}

// decision describes the bucket after an admission attempt.
func (b *bucket) decision(allowed bool) messages.Decision {
	d := messages.Decision{
		Allowed:    allowed,
		Limit:      b.capacity,
		Remaining:  int64(b.tokens),
		ResetAfter: seconds((float64(b.capacity) - b.tokens) / b.rate),
		Window:     seconds(math.Ceil(float64(b.capacity) / b.rate)),
	}
	if !allowed {
		d.RetryAfter = seconds((1 - b.tokens) / b.rate)
	}
	return d
}

// state is the bucket as a saved BucketState, its bucket time taken for
// wall-clock time (clock.state converts).
func (b *bucket) state(clientID string) messages.BucketState {
	return messages.BucketState{ClientID: clientID, Tokens: b.tokens, LastRefill: time.Unix(0, b.last).UTC()}
}

// newBucket makes a bucket from a stored client, as of its last refill
// taken for bucket time; clock.bucket converts.
func newBucket(c messages.Client) bucket {
	b := bucket{rate: c.RatePerSec, capacity: c.Capacity, tokens: c.Tokens, last: c.LastRefill.UnixNano()}
	// Written so that NaN, which min and max propagate and which would
	// admit every request, clamps to capacity as PostgreSQL's LEAST does.
	if !(b.tokens <= float64(b.capacity)) {
		b.tokens = float64(b.capacity)
	}
	b.tokens = max(0, b.tokens)
	return b
}

// seconds converts a non-negative float of seconds to a Duration, rounding
// up so "time until" never promises too early. Beyond a Duration's range
// (about 292 years: capacity 1e9 at 0.1 tokens/s) it saturates instead of
// wrapping to a negative value.
func seconds(s float64) time.Duration {
	if s <= 0 {
		return 0
	}
	ns := math.Ceil(s * 1e9)
	if !(ns < math.MaxInt64) {
		return math.MaxInt64
	}
	return time.Duration(ns)
}
