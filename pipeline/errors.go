package pipeline

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/tollgate/tollgate/messages"
)

// Errors the attempt loop hands to the proxy's ErrorHandler; they wrap the
// cause of the last failed attempt.
var (
	// errBadGateway: every attempt failed and no backend answered.
	errBadGateway = errors.New("pipeline: bad gateway")
	// errGatewayTimeout: as errBadGateway, the last attempt timed out.
	errGatewayTimeout = errors.New("pipeline: gateway timeout")
	// errRequestBody: the client's request body could not be read.
	errRequestBody = errors.New("pipeline: read request body")
	// errBodyTimeout: the client did not send its body within
	// request_timeout.
	errBodyTimeout = errors.New("pipeline: request body timed out")
)

// statusClientClosed is logged, nginx-style, for requests whose client went
// away before an answer; nobody is left to read it.
const statusClientClosed = 499

// errorReply is a prepared JSON error answer of this port:
// {"code": 503, "message": "no healthy backend"}.
type errorReply struct {
	status  int
	message string
	body    []byte
	length  []string // Content-Length value
	auth    []string // WWW-Authenticate value, for 401s
	allow   []string // Allow value, for 405s
	close   bool     // close the connection after the answer
}

func newReply(status int, message string, auth string) *errorReply {
	b := strconv.AppendInt([]byte(`{"code": `), int64(status), 10)
	b = append(b, `, "message": `...)
	b = strconv.AppendQuote(b, message)
	b = append(b, "}\n"...)
	r := &errorReply{status: status, message: message, body: b, length: []string{strconv.Itoa(len(b))}}
	if auth != "" {
		r.auth = []string{auth}
	}
	return r
}

var (
	replyMissingKey     = newReply(http.StatusUnauthorized, "missing api key", "Bearer")
	replyInvalidKey     = newReply(http.StatusUnauthorized, "invalid api key", `Bearer error="invalid_token"`)
	replyRateLimited    = newReply(http.StatusTooManyRequests, "rate limit exceeded", "")
	replyBadRequestBody = newReply(http.StatusBadRequest, "invalid request body", "")
	replyBodyTimeout    = closing(newReply(http.StatusRequestTimeout, "request body timed out", ""))
	replyConnect        = allowing(newReply(http.StatusMethodNotAllowed, "CONNECT is not supported", ""),
		"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE")
	replyBadUpgrade       = newReply(http.StatusBadRequest, "only the websocket upgrade is supported", "")
	replyClientClosed     = newReply(statusClientClosed, "client closed request", "")
	replyInternal         = newReply(http.StatusInternalServerError, "internal error", "")
	replyBadGateway       = newReply(http.StatusBadGateway, "bad gateway", "")
	replyNoBackend        = newReply(http.StatusServiceUnavailable, "no healthy backend", "")
	replyStoreUnavailable = newReply(http.StatusServiceUnavailable, "store unavailable", "")
	replyUnavailable      = newReply(http.StatusServiceUnavailable, "service unavailable", "")
	replyGatewayTimeout   = newReply(http.StatusGatewayTimeout, "gateway timeout", "")
)

// closing marks r as ending its connection: a 408's client is stalled
// mid-body, and the connection cannot carry another request.
func closing(r *errorReply) *errorReply {
	r.close = true
	return r
}

func allowing(r *errorReply, methods string) *errorReply {
	r.allow = []string{methods}
	return r
}

// replyFor is the one table from errors to answers on this port, for
// errors of the Admitter and of the attempt loop alike. clientGone reports
// that the client canceled its request, whatever error that caused.
func replyFor(err error, clientGone bool) *errorReply {
	switch {
	case errors.Is(err, errBodyTimeout):
		// Before clientGone: the server cancels the request's context
		// when a read fails, a timed-out one included.
		return replyBodyTimeout
	case errors.Is(err, messages.ErrUnknownKey):
		return replyInvalidKey
	case errors.Is(err, messages.ErrUnavailable):
		return replyStoreUnavailable
	case errors.Is(err, messages.ErrStopped):
		return replyUnavailable
	case errors.Is(err, messages.ErrNoBackend):
		return replyNoBackend
	case errors.Is(err, errGatewayTimeout):
		return replyGatewayTimeout
	case errors.Is(err, errBadGateway):
		return replyBadGateway
	case clientGone:
		return replyClientClosed
	case errors.Is(err, context.DeadlineExceeded):
		return replyGatewayTimeout
	case errors.Is(err, errRequestBody):
		return replyBadRequestBody
	default:
		return replyInternal
	}
}

// Shared read-only header values: header maps get these slices, whose
// capacity 1 makes any append copy.
var (
	valJSON    = []string{"application/json"}
	valNoSniff = []string{"nosniff"}
	valClose   = []string{"close"}
)

// write sends the reply. Headers already on w, such as the rate-limit ones,
// stay.
func (e *errorReply) write(w http.ResponseWriter) {
	h := w.Header()
	h["Content-Type"] = valJSON
	h["X-Content-Type-Options"] = valNoSniff
	h["Content-Length"] = e.length
	if e.auth != nil {
		h["Www-Authenticate"] = e.auth
	}
	if e.allow != nil {
		h["Allow"] = e.allow
	}
	if e.close {
		h["Connection"] = valClose
	}
	w.WriteHeader(e.status)
	_, _ = w.Write(e.body) // the client may be gone; nothing else to do
}
