package httpapi

import (
	"errors"
	"math"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeCreate checks that decoding a create body never panics, fails
// only with a 400, and that whatever it accepts obeys SPEC 4's rules.
func FuzzDecodeCreate(f *testing.F) {
	for _, seed := range []string{
		`{"client_id":"alice"}`,
		`{"client_id":"alice","rate_per_sec":2.5,"capacity":7,"api_key":"0123456789abcdef"}`,
		`{"client_id":"a","capacity":1e9}`,
		`{"client_id":"a","capacity":1.5}`,
		`{"client_id":"a","rate_per_sec":1e400}`,
		`{"client_id":"a","rate_per_sec":"5"}`,
		`{"client_id":"x'; DROP TABLE clients;--"}`,
		`{"client_id":"a\u0000"}`,
		`{"client_id":"a","client_id":"b"}`,
		`{"Client_ID":"a"}`,
		`{"client_id":"a"} x`,
		`[[[[[[[[[[`,
		`null`,
		"{\"client_id\":\"\xff\"}",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decodeCreate(data)
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
			t.Fatalf("accepted invalid UTF-8")
		}
		if c.ID == nil || validateClientID("client_id", *c.ID) != nil {
			t.Fatalf("accepted client_id %v", c.ID)
		}
		if r := c.Rate; r != nil && (math.IsNaN(*r) || *r <= 0 || *r > maxRatePerSec) {
			t.Fatalf("accepted rate_per_sec %v", *r)
		}
		if n := c.Capacity; n != nil && (*n < 1 || *n > maxCapacity) {
			t.Fatalf("accepted capacity %d", *n)
		}
		if k := c.APIKey; k != nil && validateAPIKey(*k) != nil {
			t.Fatalf("accepted api_key of length %d", len(*k))
		}
	})
}
