package persist

import (
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

func TestLatestStates(t *testing.T) {
	in := []messages.BucketState{
		{ClientID: "b", Tokens: 1}, {ClientID: "a", Tokens: 2}, {ClientID: "b", Tokens: 3},
		{ClientID: "c", Tokens: 4}, {ClientID: "b", Tokens: 5},
	}
	got := latestStates(in)
	assert.Equal(t, []messages.BucketState{
		{ClientID: "a", Tokens: 2}, {ClientID: "b", Tokens: 5}, {ClientID: "c", Tokens: 4},
	}, got)
	assert.Equal(t, "b", in[0].ClientID, "input left alone")
}

func TestClampTokens(t *testing.T) {
	tests := []struct {
		name     string
		tokens   float64
		capacity int64
		want     float64
	}{
		{"below", 3.5, 10, 3.5},
		{"above", 12, 10, 10},
		{"NaN sorts high as in PostgreSQL", math.NaN(), 10, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, clampTokens(tt.tokens, tt.capacity))
		})
	}
}

func TestRecordRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		c    messages.Client
	}{
		{"clear key", messages.Client{
			ID: "a", APIKey: "k-0123456789abcdef", KeyHash: messages.HashKey("k-0123456789abcdef"),
			KeyPrefix: "k-0123", RatePerSec: 2.5, Capacity: 1e9, Tokens: 0.125,
			LastRefill: time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC),
		}},
		{"hashed at rest, zero time", messages.Client{
			ID: "b", KeyHash: messages.HashKey("x"), KeyPrefix: "x", RatePerSec: 1, Capacity: 1,
			LastRefill: time.Unix(0, 0).UTC(),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeRecord(tt.c.ID, encodeRecord(tt.c))
			require.NoError(t, err)
			assert.Equal(t, tt.c, got)
		})
	}
}

// TestRecordV1ReadsAsFirstGeneration: records written before generations
// read as generation 0, version 1.
func TestRecordV1ReadsAsFirstGeneration(t *testing.T) {
	c := messages.Client{ID: "old", APIKey: "k-0123456789abcdef", KeyPrefix: "k-0123", RatePerSec: 1, Capacity: 3,
		Tokens: 2, LastRefill: time.Unix(5, 0).UTC(), Generation: 9, Version: 4}
	v2 := encodeRecord(c)
	v1 := append([]byte{recordV1}, v2[1:fixedLen]...)
	v1 = append(v1, v2[fixedLenV2:]...)
	got, err := decodeRecord("old", v1)
	require.NoError(t, err)
	c.Generation, c.Version = 0, 1
	assert.Equal(t, c, got)
}

// FuzzDecodeRecord: whatever is in the file, decoding never panics.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(messages.Client{ID: "a", APIKey: "key", KeyPrefix: "k", Capacity: 1}))
	f.Add([]byte{recordV1})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeRecord("id", b)
		if err != nil {
			return
		}
		again, err := decodeRecord("id", encodeRecord(c))
		require.NoError(t, err)
		// Compare bits: NaN != NaN.
		assert.Equal(t, math.Float64bits(c.RatePerSec), math.Float64bits(again.RatePerSec))
		assert.Equal(t, math.Float64bits(c.Tokens), math.Float64bits(again.Tokens))
		c.RatePerSec, c.Tokens, again.RatePerSec, again.Tokens = 0, 0, 0, 0
		assert.Equal(t, c, again, "a decoded record survives a round trip")
	})
}

// No statement_timeout startup parameter: PgBouncer refuses unknown ones,
// and it would cap migrations too (issue 11 item 8). Statements are bounded
// by their contexts instead.
func TestPoolSetsNoStatementTimeoutStartupParameter(t *testing.T) {
	const dsn = "postgres://u@127.0.0.1:5432/db"
	cfg, err := pgxpool.ParseConfig(dsn)
	require.NoError(t, err)
	tune(cfg, dsn)
	assert.NotContains(t, cfg.ConnConfig.RuntimeParams, "statement_timeout")
	assert.Equal(t, "tollgate", cfg.ConnConfig.RuntimeParams["application_name"])
}
