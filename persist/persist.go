package persist

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tollgate/tollgate/messages"
)

// ErrInvalid: a value breaks the schema's limits (SPEC 4 validation).
// httpapi validates before it writes, so a store returning it means a
// caller skipped validation. Both stores refuse the same values: the
// PostgreSQL check constraints and validate below agree.
var ErrInvalid = errors.New("invalid value")

// Schema limits, the same as migrations/00001_clients.sql.
const (
	maxIDLen      = 128
	maxRatePerSec = 1e6
	maxCapacity   = 1_000_000_000
)

// BulkCreator is implemented by both stores: it inserts many clients in
// one transaction, for seeding (tests, benchmarks, imports). It is all or
// nothing: a taken id or key hash, within the batch or in the store, is
// ErrConflict and nothing is written.
type BulkCreator interface {
	CreateClients(ctx context.Context, cs []messages.Client) error
}

// KeyEraser is implemented by both stores: it erases every key kept in
// clear (created before hash_api_keys was turned on), keeping its hash and
// prefix, and reports how many it erased. Start-up calls it in hashed mode.
type KeyEraser interface {
	EraseClearKeys(ctx context.Context) (int64, error)
}

var (
	_ BulkCreator = (*Postgres)(nil)
	_ BulkCreator = (*Bolt)(nil)
	_ KeyEraser   = (*Postgres)(nil)
	_ KeyEraser   = (*Bolt)(nil)
)

// Timestamps are kept with microsecond precision, PostgreSQL's, and
// handed back in UTC: both stores return the same instant for a time.
func storedTime(t time.Time) time.Time { return t.Truncate(time.Microsecond).UTC() }

// validate checks c against the schema's constraints.
func validate(c messages.Client) error {
	if n := utf8.RuneCountInString(c.ID); n < 1 || n > maxIDLen {
		return fmt.Errorf("%w: client_id must be 1..%d characters, got %d", ErrInvalid, maxIDLen, n)
	}
	for _, f := range []struct{ name, s string }{
		{"client_id", c.ID}, {"api_key", c.APIKey}, {"api_key_prefix", c.KeyPrefix},
	} {
		if err := validText(f.name, f.s); err != nil {
			return err
		}
	}
	return validateLimits(messages.Limits{RatePerSec: &c.RatePerSec, Capacity: &c.Capacity})
}

// storable reports whether a PostgreSQL text column can hold s. An id
// that is not storable names no client: lookups by it are ErrNotFound in
// both stores rather than a server error in one.
func storable(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// validText refuses what a PostgreSQL text column cannot hold.
func validText(field, s string) error {
	if !storable(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8 text", ErrInvalid, field)
	}
	return nil
}

// validateLimits checks the fields of l that are set.
func validateLimits(l messages.Limits) error {
	// Written so that NaN fails too.
	if r := l.RatePerSec; r != nil && !(*r > 0 && *r <= maxRatePerSec) {
		return fmt.Errorf("%w: rate_per_sec must be in (0, %g], got %g", ErrInvalid, float64(maxRatePerSec), *r)
	}
	if c := l.Capacity; c != nil && (*c < 1 || *c > maxCapacity) {
		return fmt.Errorf("%w: capacity must be in [1, %d], got %d", ErrInvalid, maxCapacity, *c)
	}
	return nil
}

// clampTokens is PostgreSQL's LEAST(tokens, capacity), where NaN sorts
// above every number.
func clampTokens(tokens float64, capacity int64) float64 {
	if c := float64(capacity); !(tokens <= c) {
		return c
	}
	return tokens
}

// clampLimit bounds a page size to [0, MaxPage].
func clampLimit(limit int) int { return max(0, min(limit, MaxPage)) }

// latestStates returns states sorted by client id with one state per
// client, the last one given, so a batch means the same in both stores
// (a PostgreSQL UPDATE ... FROM would pick an arbitrary duplicate) and rows
// are visited in index order. Unstorable ids are dropped: they name no
// client, and one of them must not fail the whole batch.
func latestStates(states []messages.BucketState) []messages.BucketState {
	s := slices.Clone(states)
	slices.SortStableFunc(s, func(a, b messages.BucketState) int {
		return strings.Compare(a.ClientID, b.ClientID)
	})
	out := s[:0]
	for i := range s {
		if i+1 < len(s) && s[i+1].ClientID == s[i].ClientID || !storable(s[i].ClientID) {
			continue
		}
		out = append(out, s[i])
	}
	return out
}
