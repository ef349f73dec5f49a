package pipeline

import (
	"crypto/rand"
	"encoding/binary"
	"net/http"
	"strconv"
	"sync/atomic"
)

// maxAuthorization bounds the Authorization value we look at. Keys are at
// most 256 characters (SPEC 4); anything much longer is not a key and is
// refused without asking the Admitter.
const maxAuthorization = 512

// parseAuthorization extracts the API key from an Authorization value:
// either the bare key or "Bearer <key>" (scheme case-insensitive, one or
// more spaces). A bare "Bearer" is no key. Keys are printable ASCII without
// spaces (SPEC 4), so values holding control characters, non-ASCII bytes or
// a second word are refused here, before any lookup.
func parseAuthorization(h string) (key string, ok bool) {
	if len(h) == 0 || len(h) > maxAuthorization {
		return "", false
	}
	key = h
	if len(h) > 6 && h[6] == ' ' && asciiEqualFold(h[:6], "Bearer") {
		key = h[7:]
		for len(key) > 0 && key[0] == ' ' {
			key = key[1:]
		}
	}
	if key == "" || (len(key) == 6 && asciiEqualFold(key, "bearer")) {
		return "", false // no key, or a scheme without one
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c >= 0x7f {
			return "", false
		}
	}
	return key, true
}

// asciiEqualFold reports whether s equals the ASCII letters of lower case-
// insensitively; s and lower have the same length.
func asciiEqualFold(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		if s[i]|0x20 != lower[i]|0x20 {
			return false
		}
	}
	return true
}

// maxRequestID is the longest incoming X-Request-Id we keep.
const maxRequestID = 128

// saneRequestID reports whether an incoming X-Request-Id is safe to pass on
// and to log: 1..128 characters of [A-Za-z0-9._:-].
func saneRequestID(id string) bool {
	if len(id) == 0 || len(id) > maxRequestID {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// idSource makes request IDs: a random per-process prefix, so IDs from
// several instances do not collide, and a counter, so making one costs an
// atomic add and no syscall.
type idSource struct {
	prefix [16]byte // hex of 64 random bits
	n      atomic.Uint64
}

// init draws the prefix. The top bit is set so the prefix always has 16
// hex digits.
func (s *idSource) init() {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	strconv.AppendUint(s.prefix[:0], binary.BigEndian.Uint64(b[:])|1<<63, 16)
}

// next returns a fresh ID such as "9f86d081884c7d65-1a".
func (s *idSource) next() string {
	var buf [16 + 1 + 16]byte
	b := append(buf[:0], s.prefix[:]...)
	b = append(b, '-')
	b = strconv.AppendUint(b, s.n.Add(1), 16)
	return string(b)
}

// requestID returns the request's ID as a one-element header value: the
// client's, when sane, else a new one stored in vals.
func (s *idSource) requestID(h http.Header, vals *headerVals) []string {
	if v := h[hdrRequestID]; len(v) == 1 && saneRequestID(v[0]) {
		return v[:1:1]
	}
	vals[valRequestID] = s.next()
	return vals.one(valRequestID)
}
