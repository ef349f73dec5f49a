package pipeline

import (
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/messages"
)

func TestCeilSeconds(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want int64
	}{
		{-time.Second, 0},
		{0, 0},
		{time.Nanosecond, 1},
		{time.Second, 1},
		{time.Second + time.Nanosecond, 2},
		{4 * time.Second, 4},
		{math.MaxInt64, int64(math.MaxInt64/time.Second) + 1},
	}
	for _, tt := range tests {
		t.Run(tt.in.String(), func(t *testing.T) {
			assert.Equal(t, tt.want, ceilSeconds(tt.in))
		})
	}
}

func TestRateLimitHeaderValues(t *testing.T) {
	tests := []struct {
		name string
		d    messages.Decision
		want http.Header
	}{
		{
			name: "allowed",
			d:    messages.Decision{Allowed: true, Limit: 20, Remaining: 19, ResetAfter: 200 * time.Millisecond, Window: 4 * time.Second},
			want: http.Header{
				"X-Ratelimit-Limit":     {"20"},
				"X-Ratelimit-Remaining": {"19"},
				"Ratelimit-Policy":      {`"default";q=20;w=4`},
				"Ratelimit":             {`"default";r=19;t=1`},
			},
		},
		{
			name: "refused",
			d:    messages.Decision{Limit: 20, Remaining: 0, RetryAfter: 1200 * time.Millisecond, ResetAfter: 4 * time.Second, Window: 4 * time.Second},
			want: http.Header{
				"X-Ratelimit-Limit":     {"20"},
				"X-Ratelimit-Remaining": {"0"},
				"Ratelimit-Policy":      {`"default";q=20;w=4`},
				"Ratelimit":             {`"default";r=0;t=4`},
				"Retry-After":           {"2"},
			},
		},
		{
			name: "refused with no wait still says one second",
			d:    messages.Decision{Limit: 1, Window: time.Second},
			want: http.Header{
				"X-Ratelimit-Limit":     {"1"},
				"X-Ratelimit-Remaining": {"0"},
				"Ratelimit-Policy":      {`"default";q=1;w=1`},
				"Ratelimit":             {`"default";r=0;t=0`},
				"Retry-After":           {"1"},
			},
		},
		{
			name: "large numbers",
			d:    messages.Decision{Allowed: true, Limit: 1e9, Remaining: 999999999, ResetAfter: 1500 * time.Millisecond, Window: 1e6 * time.Second},
			want: http.Header{
				"X-Ratelimit-Limit":     {"1000000000"},
				"X-Ratelimit-Remaining": {"999999999"},
				"Ratelimit-Policy":      {`"default";q=1000000000;w=1000000`},
				"Ratelimit":             {`"default";r=999999999;t=2`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v headerVals
			v.setDecision(tt.d)
			h := http.Header{}
			v.stamp(h)
			assert.Equal(t, tt.want, h)
		})
	}
}
