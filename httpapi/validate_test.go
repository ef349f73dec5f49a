package httpapi

import (
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestValidateClientID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"a", true},
		{"Az09._:-", true},
		{strings.Repeat("x", 128), true},
		{"", false},
		{strings.Repeat("x", 129), false},
		{"a b", false},
		{"a/b", false},
		{"x'; DROP TABLE clients;--", false},
		{"a%20b", false},
		{"é", false},
		{"a\x00", false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			err := validateClientID("client_id", tt.id)
			if tt.ok {
				assert.NoError(t, err)
				return
			}
			assert.ErrorIs(t, err, errBadRequest)
			assert.True(t, strings.HasPrefix(err.Error(), "client_id: "), err.Error())
		})
	}
}

func TestValidateRate(t *testing.T) {
	for _, rate := range []float64{1e-9, 0.5, 1, 1e6} {
		assert.NoError(t, validateRate(rate), rate)
	}
	for _, rate := range []float64{0, -1, math.Copysign(0, -1), 1e6 + 1e-6, math.Inf(1), math.Inf(-1), math.NaN()} {
		assert.ErrorContains(t, validateRate(rate), "rate_per_sec: must be > 0 and <= 1e6", rate)
	}
}

func TestValidateCapacity(t *testing.T) {
	for _, c := range []float64{1, 20, 1e9} {
		got, err := validateCapacity(c)
		assert.NoError(t, err)
		assert.Equal(t, int64(c), got)
	}
	for _, c := range []float64{0, 0.5, 1.5, -1, 1e9 + 1, 1e18, math.Inf(1), math.NaN()} {
		_, err := validateCapacity(c)
		assert.ErrorContains(t, err, "capacity: must be an integer", c)
	}
}

func TestValidateAPIKey(t *testing.T) {
	tests := []struct {
		name, key string
		ok        bool
	}{
		{"16 chars", strings.Repeat("k", 16), true},
		{"256 chars", strings.Repeat("k", 256), true},
		{"every printable", "!~" + strings.Repeat("Zz09", 4), true},
		{"15 chars", strings.Repeat("k", 15), false},
		{"257 chars", strings.Repeat("k", 257), false},
		{"space", "0123456789 abcdef", false},
		{"tab", "0123456789\tabcdef", false},
		{"DEL", "0123456789abcdef\x7f", false},
		{"non-ASCII", "0123456789abcdef\u00e9", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateAPIKey(tt.key)
			if tt.ok {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, "api_key: ")
			assert.NotContains(t, err.Error(), tt.key, "the key is never echoed")
		})
	}
}

func TestNewAPIKey(t *testing.T) {
	key := newAPIKey()
	assert.Regexp(t, generatedKey, key)
	assert.NoError(t, validateAPIKey(key), "generated keys pass the rules for given keys")
}
