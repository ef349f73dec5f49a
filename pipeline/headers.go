package pipeline

import (
	"net/http"
	"strconv"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// Canonical header keys, assigned straight into header maps.
const (
	hdrRequestID      = "X-Request-Id"
	hdrClientID       = "X-Client-Id"
	hdrLimit          = "X-Ratelimit-Limit"
	hdrRemaining      = "X-Ratelimit-Remaining"
	hdrPolicy         = "Ratelimit-Policy"
	hdrRateLimit      = "Ratelimit"
	hdrRetryAfter     = "Retry-After"
	hdrIdempotencyKey = "Idempotency-Key"
	hdrForwardedFor   = "X-Forwarded-For"
	hdrForwardedHost  = "X-Forwarded-Host"
	hdrForwardedProto = "X-Forwarded-Proto"
)

// X-Forwarded-Proto values, shared by every request: header maps only
// read them, and capacity 1 makes an append copy.
var (
	protoHTTP  = []string{"http"}
	protoHTTPS = []string{"https"}
)

// stampedKeys are the headers Tollgate sets on every proxied answer,
// replacing any a backend sends.
var stampedKeys = [...]string{hdrRequestID, hdrLimit, hdrRemaining, hdrPolicy, hdrRateLimit}

// headerVals holds the header values one request adds, so that they cost
// a single allocation; header maps hold one-element slices of it. It is
// not pooled: the transport may still read the outbound request headers
// after RoundTrip has returned.
type headerVals [numVals]string

// Indexes into headerVals.
const (
	valRequestID = iota // set only when generated; else the client's value is reused
	valClientID
	valLimit
	valRemaining
	valPolicy
	valRateLimit
	valRetryAfter // only when refused
	valForwardedFor
	valForwardedHost
	numVals
)

// one returns the header value slice of v[i]. Its capacity 1 makes any
// append copy instead of writing into v.
func (v *headerVals) one(i int) []string { return v[i : i+1 : i+1] }

// setDecision formats the rate-limit header values of SPEC 3 step 2 into
// one string, which the values slice.
func (v *headerVals) setDecision(d messages.Decision) {
	var buf [160]byte
	remaining := max(d.Remaining, 0)
	b := strconv.AppendInt(buf[:0], d.Limit, 10)
	iLimit := len(b)
	b = strconv.AppendInt(b, remaining, 10)
	iRemaining := len(b)
	b = append(b, `"default";q=`...)
	b = strconv.AppendInt(b, d.Limit, 10)
	b = append(b, ";w="...)
	b = strconv.AppendInt(b, ceilSeconds(d.Window), 10)
	iPolicy := len(b)
	b = append(b, `"default";r=`...)
	b = strconv.AppendInt(b, remaining, 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, ceilSeconds(d.ResetAfter), 10)
	iRateLimit := len(b)
	if !d.Allowed {
		b = strconv.AppendInt(b, max(ceilSeconds(d.RetryAfter), 1), 10)
	}
	s := string(b)
	v[valClientID] = d.ClientID
	v[valLimit] = s[:iLimit]
	v[valRemaining] = s[iLimit:iRemaining]
	v[valPolicy] = s[iRemaining:iPolicy]
	v[valRateLimit] = s[iPolicy:iRateLimit]
	v[valRetryAfter] = s[iRateLimit:]
}

// stamp sets the rate-limit headers on h. Assignment, not Add, so a
// backend's own values of these headers never reach the client.
func (v *headerVals) stamp(h http.Header) {
	h[hdrLimit] = v.one(valLimit)
	h[hdrRemaining] = v.one(valRemaining)
	h[hdrPolicy] = v.one(valPolicy)
	h[hdrRateLimit] = v.one(valRateLimit)
	if v[valRetryAfter] != "" {
		h[hdrRetryAfter] = v.one(valRetryAfter)
	}
}

// ceilSeconds returns d in whole seconds, rounded up; 0 for d <= 0.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	s := int64(d / time.Second)
	if d%time.Second != 0 {
		s++
	}
	return s
}
