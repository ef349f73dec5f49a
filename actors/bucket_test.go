package actors

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/messages"
)

const sec = int64(time.Second)

func TestBucketMath(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	i := func(v int64) *int64 { return &v }
	tests := []struct {
		name       string
		b          bucket
		steps      func(b *bucket) []bool
		wantTokens float64
		wantTaken  []bool
	}{
		{
			name:       "new client starts full and takes one",
			b:          bucket{rate: 5, capacity: 20, tokens: 20, last: 0},
			steps:      func(b *bucket) []bool { return []bool{b.take(0)} },
			wantTokens: 19, wantTaken: []bool{true},
		},
		{
			name:       "refill is continuous",
			b:          bucket{rate: 2, capacity: 10, tokens: 0, last: 0},
			steps:      func(b *bucket) []bool { b.refill(sec / 4); return nil },
			wantTokens: 0.5,
		},
		{
			name:       "refill caps at capacity",
			b:          bucket{rate: 100, capacity: 3, tokens: 1, last: 0},
			steps:      func(b *bucket) []bool { b.refill(10 * sec); return nil },
			wantTokens: 3,
		},
		{
			name: "fractional rate 1.4/s",
			b:    bucket{rate: 1.4, capacity: 5, tokens: 0, last: 0},
			steps: func(b *bucket) []bool {
				return []bool{b.take(sec / 2), b.take(sec), b.take(sec + sec/2)}
			},
			// 0.7 → refused; 1.4 → taken, 0.4; 1.1 → taken, 0.1
			wantTokens: 0.1, wantTaken: []bool{false, true, true},
		},
		{
			name:       "refusal takes nothing",
			b:          bucket{rate: 1, capacity: 5, tokens: 0.5, last: 0},
			steps:      func(b *bucket) []bool { return []bool{b.take(0), b.take(0)} },
			wantTokens: 0.5, wantTaken: []bool{false, false},
		},
		{
			name:       "long idle fills, never more",
			b:          bucket{rate: 1e6, capacity: 1e9, tokens: 0, last: 0},
			steps:      func(b *bucket) []bool { b.refill(100 * 365 * 24 * 3600 * sec); return nil },
			wantTokens: 1e9,
		},
		{
			name:       "clock going back mints nothing",
			b:          bucket{rate: 1, capacity: 5, tokens: 1, last: 10 * sec},
			steps:      func(b *bucket) []bool { b.refill(5 * sec); b.refill(10 * sec); return nil },
			wantTokens: 1,
		},
		{
			name: "capacity change clamps tokens",
			b:    bucket{rate: 1, capacity: 20, tokens: 15, last: 0},
			steps: func(b *bucket) []bool {
				b.setLimits(0, messages.Limits{Capacity: i(10)})
				return nil
			},
			wantTokens: 10,
		},
		{
			name: "rate change keeps what was earned at the old rate",
			b:    bucket{rate: 1, capacity: 100, tokens: 0, last: 0},
			steps: func(b *bucket) []bool {
				b.setLimits(2*sec, messages.Limits{RatePerSec: f(10)})
				b.refill(3 * sec)
				return nil
			},
			wantTokens: 12,
		},
		{
			name: "raising capacity adds no tokens",
			b:    bucket{rate: 1, capacity: 5, tokens: 5, last: 0},
			steps: func(b *bucket) []bool {
				b.setLimits(0, messages.Limits{Capacity: i(50)})
				return nil
			},
			wantTokens: 5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			taken := tt.steps(&b)
			assert.InDelta(t, tt.wantTokens, b.tokens, 1e-9)
			assert.Equal(t, tt.wantTaken, taken)
			assert.GreaterOrEqual(t, b.tokens, 0.0)
			assert.LessOrEqual(t, b.tokens, float64(b.capacity))
		})
	}
}

func TestBucketDecision(t *testing.T) {
	tests := []struct {
		name    string
		b       bucket
		allowed bool
		want    messages.Decision
	}{
		{
			name:    "allowed",
			b:       bucket{rate: 5, capacity: 20, tokens: 17.5},
			allowed: true,
			want: messages.Decision{Allowed: true, Limit: 20, Remaining: 17,
				ResetAfter: 500 * time.Millisecond, Window: 4 * time.Second},
		},
		{
			name: "refused",
			b:    bucket{rate: 0.5, capacity: 3, tokens: 0.25},
			want: messages.Decision{Limit: 3, Remaining: 0, RetryAfter: 1500 * time.Millisecond,
				ResetAfter: 5500 * time.Millisecond, Window: 6 * time.Second},
		},
		{
			name:    "window rounds up",
			b:       bucket{rate: 3, capacity: 10, tokens: 10},
			allowed: true,
			want:    messages.Decision{Allowed: true, Limit: 10, Remaining: 10, Window: 4 * time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.b.decision(tt.allowed))
		})
	}
}

func TestNewBucketClampsStoredState(t *testing.T) {
	b := newBucket(messages.Client{RatePerSec: 1, Capacity: 5, Tokens: 9, LastRefill: time.Unix(10, 0)})
	assert.Equal(t, 5.0, b.tokens)
	b = newBucket(messages.Client{RatePerSec: 1, Capacity: 5, Tokens: -3, LastRefill: time.Unix(10, 0)})
	assert.Equal(t, 0.0, b.tokens)
	assert.Equal(t, 10*sec, b.last)
}
