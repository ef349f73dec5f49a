package actors

import (
	"math"
	"testing"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// bucketStep is one operation of FuzzBucket at an instant.
type bucketStep struct {
	at      int64 // Unix ns, non-decreasing across steps
	refill  bool  // refill only
	resize  int64 // > 0: set capacity to this, else take
	taken   bool  // the take's result
	before  float64
	checked bool // a take, to be counted in windows
}

// decodeBucketSteps turns fuzz bytes into at most 256 steps at
// non-decreasing times, 3 bytes each: an op byte and a time step of
// mantissa<<exponent nanoseconds, so one input reaches both nanosecond
// bursts and gaps of days. Op 3 mod 8 refills, 7 sets the capacity to
// 1 + op>>3 + mantissa, others take.
func decodeBucketSteps(start int64, data []byte) []bucketStep {
	var steps []bucketStep
	now := start
	for len(data) >= 3 && len(steps) < 256 {
		op, mant, exp := data[0], int64(data[1]), data[2]%48
		data = data[3:]
		if mant<<exp > math.MaxInt64-now {
			break // the clock's end
		}
		now += mant << exp
		s := bucketStep{at: now, refill: op%8 == 3}
		if op%8 == 7 {
			s.resize = 1 + int64(op>>3) + mant
		}
		steps = append(steps, s)
	}
	return steps
}

// FuzzBucket checks the token bucket's invariants over any sequence of
// takes and refills at non-decreasing times, for any valid limits (SPEC 4:
// rate in (0, 1e6], capacity in [1, 1e9]) and any stored token count:
//   - 0 <= tokens <= capacity after every step, capacity changes included;
//   - a refused take changes nothing beyond the refill to its instant, and
//     a granted one takes exactly one token;
//   - over any window [t_i, t_j] of takes, admitted <= tokens at t_i +
//     rate × (t_j - t_i), hence <= capacity + rate × window (the largest
//     capacity the bucket had: lowering it only drops tokens);
//   - a clock going back mints nothing;
//   - a refusal's Retry-After is enough for the next take to succeed (to
//     within float rounding).
func FuzzBucket(f *testing.F) {
	steps := func(ops ...[3]byte) []byte {
		var b []byte
		for _, op := range ops {
			b = append(b, op[:]...)
		}
		return b
	}
	burst := steps([3]byte{0, 0, 0}, [3]byte{0, 0, 0}, [3]byte{0, 0, 0}, [3]byte{0, 0, 0})
	f.Add(5.0, int64(20), 20.0, burst)
	f.Add(1.4, int64(5), 0.0, steps([3]byte{0, 125, 22}, [3]byte{0, 125, 22}, [3]byte{0, 125, 22}))
	f.Add(1e6, int64(1e9), 0.0, steps([3]byte{3, 255, 47}, [3]byte{0, 1, 0}))
	f.Add(1e-9, int64(1), 0.5, steps([3]byte{0, 255, 47}, [3]byte{0, 255, 47}))
	f.Add(0.001, int64(1), 1.0, burst)
	f.Add(3.0, int64(10), math.NaN(), burst)
	f.Add(3.0, int64(10), math.Inf(1), burst)
	f.Add(3.0, int64(10), -5.0, burst)
	f.Fuzz(func(t *testing.T, rate float64, capacity int64, tokens float64, data []byte) {
		if !(rate > 0 && rate <= 1e6) || capacity < 1 || capacity > 1e9 {
			return // validation refuses these limits before they reach a bucket
		}
		const start = int64(1_700_000_000) * sec
		b := newBucket(messages.Client{RatePerSec: rate, Capacity: capacity, Tokens: tokens,
			LastRefill: time.Unix(0, start)})
		maxCap := float64(capacity)
		inRange := func(step int) { // step -1: the new bucket
			if !(b.tokens >= 0 && b.tokens <= float64(b.capacity)) {
				t.Fatalf("step %d: tokens %v outside [0, %d]", step, b.tokens, b.capacity)
			}
		}
		inRange(-1)
		steps := decodeBucketSteps(start, data)
		for i := range steps {
			s := &steps[i]
			checkClockBack(t, &b, s.at)
			switch {
			case s.refill:
				b.refill(s.at)
			case s.resize > 0:
				checkResize(t, &b, s)
				maxCap = max(maxCap, float64(s.resize))
			default:
				checkTake(t, &b, s)
				checkDecision(t, b, s.taken, s.at)
			}
			inRange(i)
		}
		checkWindows(t, rate, maxCap, steps)
	})
}

// checkTake takes a token at s.at and checks that a refusal changed
// nothing beyond the refill to s.at and a grant took exactly one token.
func checkTake(t *testing.T, b *bucket, s *bucketStep) {
	t.Helper()
	ref := *b
	ref.refill(s.at)
	s.before, s.checked = ref.tokens, true
	s.taken = b.take(s.at)
	switch {
	case !s.taken && *b != ref:
		t.Fatalf("refused take changed the bucket: %+v, want %+v", *b, ref)
	case !s.taken && ref.tokens >= 1:
		t.Fatalf("refused with %v tokens", ref.tokens)
	case s.taken && (b.tokens != ref.tokens-1 || b.last != ref.last):
		t.Fatalf("take left %v tokens from %v", b.tokens, ref.tokens)
	}
}

// checkResize sets the capacity to s.resize at s.at and checks that no
// tokens appeared beyond what the rate earned since the last update.
func checkResize(t *testing.T, b *bucket, s *bucketStep) {
	t.Helper()
	before, last := b.tokens, b.last
	b.setLimits(s.at, messages.Limits{Capacity: &s.resize})
	if b.tokens > before+b.rate*float64(s.at-last)/1e9+1e-9*(1+before) {
		t.Fatalf("capacity change minted tokens: %v to %v", before, b.tokens)
	}
}

// checkClockBack asserts that refilling at an earlier instant than the
// bucket's last update changes nothing.
func checkClockBack(t *testing.T, b *bucket, now int64) {
	t.Helper()
	for _, back := range []int64{b.last - 1, b.last - sec, now - 3600*sec} {
		if back >= b.last {
			continue
		}
		c := *b
		c.refill(back)
		if c != *b {
			t.Fatalf("refill at %d, before last %d, changed %+v to %+v", back, b.last, *b, c)
		}
	}
}

// checkDecision asserts the headers' figures are in range and that a
// refused client retrying after RetryAfter finds a token.
func checkDecision(t *testing.T, b bucket, taken bool, now int64) {
	t.Helper()
	d := b.decision(taken)
	if d.Remaining < 0 || d.Remaining > b.capacity || d.ResetAfter < 0 || d.Window <= 0 {
		t.Fatalf("decision out of range: %+v for %+v", d, b)
	}
	if taken {
		return
	}
	if d.RetryAfter <= 0 {
		t.Fatalf("refused with Retry-After %v", d.RetryAfter)
	}
	later := int64(d.RetryAfter)
	if later > math.MaxInt64-now {
		return // beyond the clock's range: nothing to retry at
	}
	// The refill's float arithmetic may fall short of the token by an ulp
	// or so (rate 1e-9 with 0.9999999999999999 tokens), which the header's
	// whole seconds absorb; more than that would be a wrong promise.
	c := b
	c.refill(now + later)
	if c.tokens < 1-1e-12 {
		t.Fatalf("%v tokens after Retry-After %v: %+v", c.tokens, d.RetryAfter, b)
	}
}

// checkWindows asserts that every window of takes admitted no more than
// the tokens at its start plus what the rate earned across it, plus a
// relative epsilon for float rounding over at most 256 steps.
func checkWindows(t *testing.T, rate, capf float64, steps []bucketStep) {
	t.Helper()
	for i, first := range steps {
		if !first.checked {
			continue
		}
		admitted := 0
		for _, s := range steps[i:] {
			if !s.checked {
				continue
			}
			if s.taken {
				admitted++
			}
			window := float64(s.at-first.at) / 1e9
			earned := rate * window
			eps := 1e-12*(capf+earned) + 1e-9
			if float64(admitted) > first.before+earned+eps {
				t.Fatalf("admitted %d in %vs from %v tokens at rate %v", admitted, window, first.before, rate)
			}
			if float64(admitted) > capf+earned+eps {
				t.Fatalf("admitted %d in %vs: capacity %v + rate %v × window", admitted, window, capf, rate)
			}
		}
	}
}

// TestNewBucketWithNaNTokensStillLimits is the regression test for a NaN
// token count read from the store: min and max propagate NaN, and a bucket
// of NaN tokens admitted every request forever.
func TestNewBucketWithNaNTokensStillLimits(t *testing.T) {
	b := newBucket(messages.Client{RatePerSec: 1, Capacity: 3, Tokens: math.NaN(), LastRefill: time.Unix(10, 0)})
	if b.tokens != 3 {
		t.Fatalf("tokens = %v, want 3 (clamped like PostgreSQL's LEAST)", b.tokens)
	}
	for i := range 3 {
		if !b.take(10 * sec) {
			t.Fatalf("take %d refused", i)
		}
	}
	if b.take(10 * sec) {
		t.Fatal("a fourth take at once was admitted")
	}
}

// TestDecisionSaturatesForVerySlowBuckets is the regression test for
// durations past time.Duration's range (capacity/rate above ~292 years):
// ResetAfter wrapped to a negative value and Window to a wrong one.
func TestDecisionSaturatesForVerySlowBuckets(t *testing.T) {
	b := bucket{rate: 0.01, capacity: 1e9, tokens: 0.5}
	d := b.decision(false)
	if d.ResetAfter != math.MaxInt64 || d.Window != math.MaxInt64 || d.RetryAfter != 50*time.Second {
		t.Fatalf("decision = %+v, want ResetAfter and Window saturated, RetryAfter 50s", d)
	}
}
