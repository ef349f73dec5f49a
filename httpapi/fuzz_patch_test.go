package httpapi

import (
	"errors"
	"testing"
	"unicode/utf8"
)

// FuzzDecodePatch checks that decoding a PATCH body never panics, fails
// only with a 400 whose message is UTF-8, and that whatever it accepts
// changes at least one limit, within SPEC 4's ranges, and never the key.
func FuzzDecodePatch(f *testing.F) {
	for _, seed := range []string{
		`{"capacity":10}`,
		`{"rate_per_sec":0.5}`,
		`{"client_id":"alice","rate_per_sec":2,"capacity":7}`,
		`{"client_id":"alice"}`,
		`{}`,
		`{"capacity":null,"rate_per_sec":null}`,
		`{"api_key":"0123456789abcdef","capacity":1}`,
		`{"capacity":1e400}`,
		`{"capacity":-0}`,
		`{"capacity":1000000000.0000001}`,
		`{"rate_per_sec":1e-320}`,
		`{"rate_per_sec":true}`,
		`{"capacity":"10"}`,
		`{"capacity":[10]}`,
		`{"client_id":"x' OR '1'='1","capacity":1}`,
		`{"capacity":1}{"capacity":2}`,
		"{\"capacity\":1,\"client_id\":\"\xc3\x28\"}",
		`[` + `{"capacity":1}` + `]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := decodePatch(data)
		if err != nil {
			if !errors.Is(err, errBadRequest) {
				t.Fatalf("error %v is not a 400", err)
			}
			if !utf8.ValidString(err.Error()) {
				t.Fatalf("error message is not UTF-8: %q", err.Error())
			}
			return
		}
		if !utf8.Valid(data) {
			t.Fatal("accepted invalid UTF-8")
		}
		if p.APIKey != nil {
			t.Fatal("PATCH accepted an api_key")
		}
		if p.Rate == nil && p.Capacity == nil {
			t.Fatal("accepted a PATCH that changes nothing")
		}
		if p.ID != nil && validateClientID("client_id", *p.ID) != nil {
			t.Fatalf("accepted client_id %q", *p.ID)
		}
		if r := p.Rate; r != nil && !(*r > 0 && *r <= maxRatePerSec) { // NaN fails too
			t.Fatalf("accepted rate_per_sec %v", *r)
		}
		if n := p.Capacity; n != nil && (*n < 1 || *n > maxCapacity) {
			t.Fatalf("accepted capacity %d", *n)
		}
	})
}

// FuzzParseListQuery checks GET /clients' query: errors are 400s and what
// is accepted is a page size in [1, 1000] and an empty or valid cursor
// and prefix.
func FuzzParseListQuery(f *testing.F) {
	for _, seed := range []string{
		"", "limit=10", "limit=1000&after=alice", "limit=0", "limit=1001", "limit=-1",
		"limit=1e3", "limit=9999999999999999999999", "after=%27%3B%20DROP%20TABLE%20clients%3B--",
		"after=%ff", "after=%", "limit=5;after=x", "after=a&after=b", "limit=%00",
		"prefix=a", "prefix=-", "prefix=%2F", "prefix=a~",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, rawQuery string) {
		q, err := parseListQuery(rawQuery)
		if err != nil {
			if !errors.Is(err, errBadRequest) {
				t.Fatalf("error %v is not a 400", err)
			}
			return
		}
		if q.limit < 1 || q.limit > maxPageSize {
			t.Fatalf("accepted limit %d", q.limit)
		}
		if q.after != "" && validateClientID("after", q.after) != nil {
			t.Fatalf("accepted after %q", q.after)
		}
		if q.prefix == "" {
			return
		}
		if validateClientID("prefix", q.prefix) != nil {
			t.Fatalf("accepted prefix %q", q.prefix)
		}
		if b := beforePrefix(q.prefix); b >= q.prefix {
			t.Fatalf("beforePrefix(%q) = %q does not sort before it", q.prefix, b)
		}
	})
}
