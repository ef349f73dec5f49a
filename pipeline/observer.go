package pipeline

import (
	"time"

	"github.com/tollgate/tollgate/messages"
)

// Observer receives the pipeline's measurements, for metrics. Its methods
// run on the request path, concurrently: they must be safe for concurrent
// use, cheap, and must not block. Package metrics implements it; a nil
// Options.Observer measures nothing and costs nothing.
//
// A backend is passed whole so that an implementation can cache what it
// derives from it under Backend.ID, which stays the same while the backend
// stays configured. The zero Backend (nil URL) means no backend was tried.
type Observer interface {
	// ObserveRequest reports one answered request: the backend whose
	// answer or failure counts, the status the client got (499 when it
	// went away first) and the time from arrival to the end of the answer.
	ObserveRequest(b messages.Backend, status int, d time.Duration)
	// ObserveAttempt reports one upstream attempt on b: result is one of
	// the Attempt constants and d runs from sending the request to the
	// backend's response headers or the attempt's failure.
	ObserveAttempt(b messages.Backend, result string, d time.Duration)
	// Retry reports that a failed attempt on b is retried elsewhere.
	Retry(b messages.Backend)
	// RetryRefused reports that a failed attempt on b was not retried
	// because the retry budget was spent: its answer went to the client.
	RetryRefused(b messages.Backend)
	// RateLimited reports a request refused with 429.
	RateLimited()
	// AuthFailed reports a request refused with 401; reason is one of the
	// Auth constants.
	AuthFailed(reason string)
}

// AdmissionObserver may also be implemented by an Options.Observer: it is
// then told every admission decision with its client, for per-client
// views such as the dashboard's top clients. Those views bound their own
// memory; metrics must not, since a client label grows without bound.
// ObserveAdmission runs on the request path, like Observer's methods.
type AdmissionObserver interface {
	ObserveAdmission(clientID string, allowed bool)
}

// Attempt results passed to Observer.ObserveAttempt.
const (
	AttemptSuccess   = "success"    // the backend answered and the answer stands
	AttemptError     = "error"      // connection error: refused, reset, closed
	AttemptTimeout   = "timeout"    // the attempt ran out of request_timeout
	AttemptBadStatus = "bad_status" // the backend answered 502, 503 or 504
	AttemptCanceled  = "canceled"   // the client went away during the attempt
)

// Auth failure reasons passed to Observer.AuthFailed.
const (
	AuthMissing   = "missing"   // no Authorization header
	AuthMalformed = "malformed" // a header that holds no possible key
	AuthUnknown   = "unknown"   // a well-formed key of no client
)

// attemptResult names a failure kind for the Observer.
func attemptResult(k failKind) string {
	switch k {
	case failNone:
		return AttemptSuccess
	case failConn:
		return AttemptError
	case failTimeout:
		return AttemptTimeout
	case failAnswer:
		return AttemptBadStatus
	default:
		return AttemptCanceled
	}
}
