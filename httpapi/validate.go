package httpapi

import (
	"math"
	"strconv"
)

// Limits of SPEC 4's validation rules.
const (
	maxClientIDLen = 128
	maxRatePerSec  = 1e6
	maxCapacity    = 1e9
	minAPIKeyLen   = 16
	maxAPIKeyLen   = 256
)

// validateClientID checks SPEC 4's client_id rule: 1..128 characters of
// [A-Za-z0-9._:-]. The narrow alphabet keeps ids safe in paths, logs and
// SQL without escaping. field names the value in the error ("client_id",
// "after").
func validateClientID(field, id string) error {
	if id == "" {
		return badRequest("%s: must not be empty", field)
	}
	if len(id) > maxClientIDLen {
		return badRequest("%s: must be at most %d characters, got %d", field, maxClientIDLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		if !isIDByte(id[i]) {
			return badRequest("%s: may contain only A-Z a-z 0-9 . _ : - (bad character at position %d)", field, i+1)
		}
	}
	return nil
}

func isIDByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c == '.' || c == '_' || c == ':' || c == '-'
}

// validateRate checks rate_per_sec: finite, > 0, <= 1e6.
func validateRate(rate float64) error {
	if math.IsNaN(rate) || rate <= 0 || rate > maxRatePerSec {
		return badRequest("rate_per_sec: must be > 0 and <= 1e6, got %s", formatNumber(rate))
	}
	return nil
}

// validateCapacity checks capacity: an integer from 1 to 1e9. It takes a
// float64 because JSON numbers arrive as such and 1.5 must be refused, not
// truncated.
func validateCapacity(capacity float64) (int64, error) {
	if math.IsNaN(capacity) || capacity < 1 || capacity > maxCapacity {
		return 0, badRequest("capacity: must be an integer from 1 to 1e9, got %s", formatNumber(capacity))
	}
	if capacity != math.Trunc(capacity) {
		return 0, badRequest("capacity: must be an integer, got %s", formatNumber(capacity))
	}
	return int64(capacity), nil
}

// validateAPIKey checks a caller-chosen key: 16..256 printable ASCII
// characters without spaces (0x21..0x7E), so it fits an Authorization
// header unchanged. The message never echoes the key.
func validateAPIKey(key string) error {
	if len(key) < minAPIKeyLen || len(key) > maxAPIKeyLen {
		return badRequest("api_key: must be %d to %d characters, got %d", minAPIKeyLen, maxAPIKeyLen, len(key))
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return badRequest("api_key: must be printable ASCII without spaces (bad character at position %d)", i+1)
		}
	}
	return nil
}

// formatNumber prints a number for an error message compactly.
func formatNumber(f float64) string {
	return strconv.FormatFloat(f, 'g', -1, 64)
}
