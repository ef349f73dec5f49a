package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// failKind says how an attempt failed.
type failKind uint8

const (
	failNone     failKind = iota // the backend answered and the answer stands
	failConn                     // connection error: refused, reset, closed
	failTimeout                  // the attempt ran out of request_timeout
	failAnswer                   // the backend answered 502, 503 or 504
	failCanceled                 // the client went away; not the backend's fault
	failClient                   // reading the client's body failed: its fault
)

// failure describes a failed attempt.
type failure struct {
	kind failKind
	// sent: some byte of the request was written to the backend, so it
	// may have acted on it. A failed dial or TLS handshake, and a reused
	// keep-alive connection found closed before anything was written, are
	// not sent.
	sent bool
	// connected: the attempt got a connection to the backend.
	connected bool
}

// passive reports whether f says the backend is unreachable (SPEC 3.6): a
// connection error, or a timeout before any connection was made (a
// backend dropping SYNs, a stuck TLS handshake).
func (f failure) passive() bool {
	return f.kind == failConn || f.kind == failTimeout && !f.connected
}

// shouldRetry is the retry policy of SPEC 3 step 5, leaving aside the
// budget and the backends left: idempotent methods and requests carrying
// an Idempotency-Key retry on any failure; others only when nothing was
// sent. A client cancellation is never retried.
func shouldRetry(method string, hasIdempotencyKey bool, f failure) bool {
	switch f.kind {
	case failConn, failTimeout, failAnswer:
	default:
		return false
	}
	return !f.sent || hasIdempotencyKey || idempotent(method)
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions,
		http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// failedStatus reports whether an answer counts as a failed attempt.
func failedStatus(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable ||
		code == http.StatusGatewayTimeout
}

// outcome is the result of one attempt.
type outcome struct {
	res  *http.Response // nil when the transport failed; its body ends at
	at   *attempt       // the attempt, whose Close ends it
	err  error
	fail failure
}

// RoundTrip is the attempt loop. forward (or, for upgrades, the
// ReverseProxy) calls it once per request with the rewritten outbound
// request; each attempt goes to a backend not yet tried, and the answer
// returned is the one streamed back.
func (x *exchange) RoundTrip(out *http.Request) (*http.Response, error) {
	lim := x.p.limits.Load()
	body, err := x.prepareBody(out, lim.requestTimeout)
	if err != nil {
		return nil, err
	}
	defer body.release()
	budget := lim.maxRetries + 1
	if !body.replayable() {
		budget = 1
	}
	// An empty key promises nothing.
	hasKey := len(out.Header[hdrIdempotencyKey]) > 0 && out.Header[hdrIdempotencyKey][0] != ""

	x.beginRequest()
	var last lastFailure
	b, ok := x.p.pick(&x.route)
	if !ok {
		return nil, messages.ErrNoBackend
	}
	for {
		if x.attempts > 0 {
			x.logRetry(&last, b)
			if x.p.obs != nil {
				x.p.obs.Retry(x.last)
			}
		}
		x.attempts++
		x.last, x.backend = b, b.URL.Host
		x.beginAttempt(b)
		o := x.timedTry(out, b, &body, lim.requestTimeout)
		if o.fail.kind != failNone {
			x.endAttempt()
		}
		if o.fail.passive() {
			x.p.backends.ReportFailure(out.Context(), b, o.err)
		}
		retry := x.attempts < budget && shouldRetry(out.Method, hasKey, o.fail)
		if retry {
			// The next backend is chosen before the answer is settled:
			// with none left, this answer is the last one and goes to the
			// client as it is, whatever its size (SPEC 3.5).
			b, retry = x.p.pick(&x.route)
		}
		if retry {
			// The budget is asked only for a retry that can happen, so a
			// refusal counted is a retry really refused.
			retry = x.mayRetry()
		}
		if res, done, err := x.settle(out, &last, o, retry); done {
			return res, err
		}
		if !retry {
			break
		}
	}
	return x.giveUp(&last)
}

// lastFailure is what the attempt loop keeps of the failed attempts.
type lastFailure struct {
	answer  *http.Response   // latest failed answer, held in memory
	from    messages.Backend // backend of answer
	backend string           // backend of the latest attempt
	status  int              // its answer's status, 0 if none
	err     error            // its error, nil for an answer held
	fail    failure
}

// settle acts on an attempt's outcome. done reports that res or err is the
// loop's result; otherwise the failure is recorded in last.
func (x *exchange) settle(out *http.Request, last *lastFailure, o outcome, retry bool) (res *http.Response, done bool, err error) {
	switch {
	case o.fail.kind == failNone:
		closeAnswer(last.answer)
		return x.deliver(o.res), true, nil
	case o.fail.kind == failCanceled:
		closeAnswer(last.answer)
		return nil, true, out.Context().Err()
	case o.fail.kind == failClient:
		closeAnswer(last.answer)
		return nil, true, o.err
	case o.res != nil:
		if !retry {
			closeAnswer(last.answer)
			return x.deliver(o.res), true, nil
		}
		// Held so that it can be returned if every attempt fails. One too
		// large to hold keeps its status and headers only: a retry is
		// worth more than its body, but it is still the latest answer.
		o.err = holdAnswer(o.res)
		closeAnswer(last.answer)
		last.answer, last.from = o.res, x.last
	}
	last.backend, last.status, last.err, last.fail = x.backend, 0, o.err, o.fail
	if o.res != nil {
		last.status = o.res.StatusCode
	}
	return nil, false, nil
}

// giveUp ends a request whose every attempt failed: the last answer if a
// backend gave one, else an error for a 504 or a 502.
func (x *exchange) giveUp(last *lastFailure) (*http.Response, error) {
	switch {
	case last.answer != nil:
		x.last, x.backend = last.from, last.from.URL.Host
		return x.deliver(last.answer), nil
	case last.fail.kind == failTimeout:
		return nil, fmt.Errorf("%w: %w", errGatewayTimeout, last.err)
	default:
		return nil, fmt.Errorf("%w: %w", errBadGateway, last.err)
	}
}

// timedTry is try, reported to the Observer when there is one.
func (x *exchange) timedTry(out *http.Request, b messages.Backend, body *requestBody, timeout time.Duration) outcome {
	obs := x.p.obs
	if obs == nil {
		return x.try(out, b, body, timeout)
	}
	start := time.Now()
	o := x.try(out, b, body, timeout)
	obs.ObserveAttempt(b, attemptResult(o.fail.kind), time.Since(start))
	return o
}

// try makes one attempt on b, bounded by request_timeout as attempt says.
// On success the answer's body ends the attempt when closed.
func (x *exchange) try(out *http.Request, b messages.Backend, body *requestBody, timeout time.Duration) outcome {
	parent := out.Context()
	if x.base != nil {
		parent = x.base
	}
	at := newAttempt(parent, timeout)
	x.wire = wire{}
	res, err := x.p.transport.RoundTrip(attemptRequest(at, out, b, body))
	if err != nil {
		at.end()
		if berr := body.clientErr(); berr != nil {
			if isTimeout(berr) {
				return outcome{err: fmt.Errorf("%w: %w", errBodyTimeout, berr), fail: failure{kind: failClient, sent: true}}
			}
			if out.Context().Err() == nil {
				return outcome{err: fmt.Errorf("%w: %w", errRequestBody, berr), fail: failure{kind: failClient, sent: true}}
			}
		}
		return outcome{err: err, fail: x.classify(out.Context(), at)}
	}
	at.answer(res)
	if failedStatus(res.StatusCode) {
		return outcome{res: res, at: at, fail: failure{kind: failAnswer, sent: true, connected: true}}
	}
	return outcome{res: res, at: at}
}

// classify tells a client cancellation, a timeout and a connection error
// apart, in that order: the client's context and the attempt's clock
// explain an error better than its text does. Whether the request was
// sent comes from the connection, not the error.
func (x *exchange) classify(client context.Context, at *attempt) failure {
	f := failure{kind: failConn, sent: x.wire.wrote(), connected: x.wire.connected}
	if !x.p.counting {
		// A foreign transport may never report its connection (GotConn),
		// so it may have written the request: assume it did, and that it
		// connected, so a timeout does not mark the backend down either.
		f.sent, f.connected = true, true
	}
	switch {
	case client.Err() != nil:
		return failure{kind: failCanceled, sent: true}
	case at.timedOut():
		f.kind = failTimeout
	}
	return f
}

// attemptRequest is out aimed at b, with its own context and body reader.
// out itself is left alone: every attempt starts from it.
func attemptRequest(at *attempt, out *http.Request, b messages.Backend, body *requestBody) *http.Request {
	req := out.WithContext(at.ctx)
	u := &at.url // in the attempt's allocation, not one of its own
	*u = *out.URL
	u.Scheme, u.Host = b.URL.Scheme, b.URL.Host
	if b.URL.Path != "" || b.URL.RawQuery != "" {
		joinURL(u, b.URL)
	}
	req.URL = u
	req.Host = b.URL.Host
	body.attach(req, at)
	return req
}

// joinURL puts u under the base path and query of target, as
// httputil.NewSingleHostReverseProxy does.
func joinURL(u, target *url.URL) {
	if target.Path != "" && target.Path != "/" {
		if target.RawPath != "" || u.RawPath != "" {
			u.RawPath = strings.TrimSuffix(target.EscapedPath(), "/") + "/" +
				strings.TrimPrefix(u.EscapedPath(), "/")
		}
		u.Path = strings.TrimSuffix(target.Path, "/") + "/" + strings.TrimPrefix(u.Path, "/")
	}
	switch {
	case target.RawQuery == "":
	case u.RawQuery == "":
		u.RawQuery = target.RawQuery
	default:
		u.RawQuery = target.RawQuery + "&" + u.RawQuery
	}
}

// deliver readies the answer the proxy will stream to the client.
func (x *exchange) deliver(res *http.Response) *http.Response {
	x.status = res.StatusCode
	if res.Header == nil {
		res.Header = make(http.Header)
	}
	if res.Body == nil {
		res.Body = http.NoBody
	}
	// Tollgate's headers are on the ResponseWriter already and the
	// backend's join them, so the backend's copies of ours go.
	for _, k := range stampedKeys {
		delete(res.Header, k)
	}
	// forward's 1xx relay stamps ours again after each 1xx. The
	// ReverseProxy's (upgrades) leaves the writer's headers cleared; then
	// ours ride on the answer.
	if x.relay == nil {
		if _, ok := x.w.Header()[hdrRequestID]; !ok {
			x.stamp(res.Header)
		}
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// The proxy needs the raw body to take over the connection.
		return res
	}
	x.body = attemptBody{rc: res.Body}
	res.Body = &x.body
	return res
}

// closeAnswer discards a held failed answer that a later one replaces.
func closeAnswer(res *http.Response) {
	if res != nil {
		_ = res.Body.Close() // held in memory; closing cannot fail
	}
}

// logRetry logs a retry on next after the failed attempt in last.
func (x *exchange) logRetry(last *lastFailure, next messages.Backend) {
	ctx := x.in.Context()
	if !x.p.logger.Enabled(ctx, slog.LevelWarn) {
		return
	}
	attrs := [8]slog.Attr{
		slog.String("request_id", x.requestID()),
		slog.String("client_id", x.clientID()),
		slog.String("method", x.in.Method),
		slog.String("backend", last.backend),
		slog.String("next_backend", next.URL.Host),
		slog.Int("attempt", x.attempts),
	}
	n := 6
	if last.status != 0 {
		attrs[n] = slog.Int("status", last.status)
		n++
	}
	if last.err != nil {
		attrs[n] = slog.Any("err", last.err)
		n++
	}
	x.p.logger.LogAttrs(ctx, slog.LevelWarn, "retrying request", attrs[:n]...)
}
