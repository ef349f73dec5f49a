// Package pipeline owns the main port's request path (SPEC 3): authenticate
// the API key, admit the request against the client's bucket, pick a
// healthy backend (smooth weighted round-robin or least_request, SPEC 10),
// forward (by httputil.ReverseProxy's rules, without its per-request
// copies) and retry failed attempts on other backends within the retry
// budget. It also stamps request IDs and writes the access log (SPEC 6).
//
// A Pipeline starts no goroutines of its own; the http.Transport it builds
// keeps pooled connections, which CloseIdleConnections releases at shutdown.
package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// Admitter decides whether a client may send one more request. It is
// implemented by actors.Limiter.
type Admitter interface {
	// Admit takes one token from the bucket of the client owning apiKey.
	// Errors: messages.ErrUnknownKey (401), messages.ErrUnavailable (503
	// "store unavailable"), messages.ErrStopped (503), ctx errors. A refused
	// request is not an error: Decision.Allowed is false (429).
	Admit(ctx context.Context, apiKey string) (messages.Decision, error)
}

// Backends is the live set of upstream servers. It is implemented by
// actors.Registry.
type Backends interface {
	// Healthy returns an immutable snapshot of the healthy backends; callers
	// must not modify it. It must be cheap: it runs on every attempt.
	Healthy() []messages.Backend
	// ReportFailure is the passive health check: a connection to b failed.
	ReportFailure(ctx context.Context, b messages.Backend, err error)
}

// Options configures New. Admitter and Backends are required.
type Options struct {
	Admitter Admitter
	Backends Backends
	// MaxRetries is how many more attempts a failed request may make;
	// negative counts as 0. SetLimits changes it live.
	MaxRetries int
	// RequestTimeout bounds each attempt's silences: the wait for the
	// answer's headers, then each gap between reads of its body; and each
	// read of the client's body (408 past it). 0 means no bound. SetLimits
	// changes it live.
	RequestTimeout time.Duration
	// MaxRetryBodyBytes is the largest request body buffered so it can be
	// sent again on retry. Larger bodies are streamed in one attempt; 0
	// streams every body. Values above 1 GiB count as 1 GiB.
	MaxRetryBodyBytes int64
	// MaxRetryBufferBytes caps the request body bytes held in memory for
	// retries across all requests in flight; past it, bodies stream
	// without retry. 0 means the default, 64 MiB; negative holds none.
	// See load_balancer.max_retry_buffer_bytes.
	MaxRetryBufferBytes int64
	// Logger receives access lines (debug), retries and failures (warn).
	// Nil discards.
	Logger *slog.Logger
	// AccessLog raises the per-request access line from debug to info.
	AccessLog bool
	// Observer receives measurements for metrics; nil measures nothing.
	Observer Observer
	// Transport sends each attempt. Nil means a transport tuned for many
	// keep-alive connections to few hosts, owned by the Pipeline. Another
	// transport cannot tell whether a failed attempt wrote anything, so
	// every failure through it counts as sent: POST and PATCH without an
	// Idempotency-Key are then never retried.
	Transport http.RoundTripper
	// DialTLSContext, for the Pipeline's own transport, connects to https
	// backends and completes the TLS handshake (verifying the backend as
	// the caller sees fit); nil means the standard library's, against the
	// system roots.
	DialTLSContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Policy is PolicyRoundRobin ("" too) or PolicyLeastRequest;
	// RetryBudget bounds retries in flight, nil meaning no bound beside
	// MaxRetries. SetBalancing changes both live.
	Policy      string
	RetryBudget *RetryBudget
}

// Pipeline is the http.Handler of the main port. It is safe for concurrent
// use; SetLimits may run while it serves.
type Pipeline struct {
	admitter    Admitter
	backends    Backends
	transport   http.RoundTripper
	counting    bool // transport is newTransport's: its connections count bytes written
	maxBody     int64
	retryBuffer bufferBudget // bytes of bodies held for retries
	logger      *slog.Logger
	accessLevel slog.Level
	obs         Observer          // nil: no metrics
	admObs      AdmissionObserver // obs, when it implements it; else nil

	limits       atomic.Pointer[limits]
	lb           balancer
	budget       retryBudget
	budgetLimits atomic.Pointer[budgetLimits] // nil: no retry budget
	ids          idSource
	buffers      copyBuffers // ReverseProxy's response copy buffers
	exchanges    sync.Pool   // *exchange, one per request in flight
}

// limits are the settings SIGHUP may change; a new value replaces the old
// one whole, so an attempt loop sees one consistent pair.
type limits struct {
	maxRetries     int
	requestTimeout time.Duration
}

// New returns a Pipeline. It panics if Admitter or Backends is nil, which is
// a wiring mistake rather than a runtime condition.
func New(opts Options) *Pipeline {
	if opts.Admitter == nil || opts.Backends == nil {
		panic("pipeline: New needs an Admitter and a Backends")
	}
	p := &Pipeline{
		admitter:    opts.Admitter,
		backends:    opts.Backends,
		transport:   opts.Transport,
		maxBody:     min(max(opts.MaxRetryBodyBytes, 0), maxRetryBodyLimit),
		logger:      opts.Logger,
		accessLevel: slog.LevelDebug,
		obs:         opts.Observer,
	}
	p.retryBuffer.limit = max(opts.MaxRetryBufferBytes, 0)
	if opts.MaxRetryBufferBytes == 0 {
		// Left out of an Options literal: retries stay on.
		p.retryBuffer.limit = defaultRetryBuffer
	}
	p.admObs, _ = opts.Observer.(AdmissionObserver)
	p.ids.init()
	if p.transport == nil {
		p.transport, p.counting = newTransport(opts.DialTLSContext), true
	}
	if p.logger == nil {
		p.logger = slog.New(slog.DiscardHandler)
	}
	if opts.AccessLog {
		p.accessLevel = slog.LevelInfo
	}
	p.exchanges.New = func() any { return newExchange(p) }
	p.SetLimits(opts.MaxRetries, opts.RequestTimeout)
	p.SetBalancing(opts.Policy, opts.RetryBudget)
	return p
}

// SetLimits changes the retry budget and the per-attempt timeout for
// requests that start after it returns. Safe to call while serving.
func (p *Pipeline) SetLimits(maxRetries int, requestTimeout time.Duration) {
	p.limits.Store(&limits{
		maxRetries:     max(maxRetries, 0),
		requestTimeout: max(requestTimeout, 0),
	})
}

// CloseIdleConnections closes the transport's idle keep-alive connections
// to backends, so no connection goroutine outlives shutdown.
func (p *Pipeline) CloseIdleConnections() {
	if c, ok := p.transport.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// ServeHTTP runs one request through authenticate, admit, pick, forward and
// retry. Every answer carries X-Request-Id; answers to admitted or refused
// requests carry the rate-limit headers.
func (p *Pipeline) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := p.exchanges.Get().(*exchange)
	x.begin(r)
	// Deferred so the access line is written and x recycled even when the
	// proxy aborts a broken response stream with http.ErrAbortHandler.
	defer p.finish(x)

	// Refused before the key is looked at: no request of these kinds is
	// ever forwarded, so none should cost a token.
	if r.Method == http.MethodConnect {
		x.reply(w, replyConnect)
		return
	}
	// "Connection: upgrade" without an Upgrade header asks for nothing:
	// both are hop-by-hop and dropped, and the request is an ordinary one.
	upgrade := len(r.Header["Upgrade"]) > 0 && containsToken(r.Header["Connection"], "upgrade")
	if upgrade && !isWebSocket(r.Header["Upgrade"]) {
		x.reply(w, replyBadUpgrade)
		return
	}

	vals := r.Header["Authorization"]
	if len(vals) == 0 || vals[0] == "" {
		p.authFailed(AuthMissing)
		x.reply(w, replyMissingKey)
		return
	}
	key, ok := parseAuthorization(vals[0])
	if !ok || len(vals) > 1 {
		p.authFailed(AuthMalformed)
		x.reply(w, replyInvalidKey)
		return
	}
	d, err := p.admitter.Admit(r.Context(), key)
	if err != nil {
		if errors.Is(err, messages.ErrUnknownKey) {
			p.authFailed(AuthUnknown)
		}
		x.fail(w, err)
		return
	}
	x.admit(d)
	if p.admObs != nil {
		p.admObs.ObserveAdmission(d.ClientID, d.Allowed)
	}
	if !d.Allowed {
		if p.obs != nil {
			p.obs.RateLimited()
		}
		x.reply(w, replyRateLimited)
		return
	}
	// Stamped before forwarding by assignment, which costs nothing; the
	// backend's headers then join them in the same map.
	x.w = w
	x.stamp(w.Header())
	x.forward(w, r, upgrade)
}

// isWebSocket reports whether an Upgrade header asks for websocket and
// nothing else (SPEC 3.4): other protocols, h2c among them, would tunnel
// past what Tollgate checks.
func isWebSocket(upgrade []string) bool {
	return len(upgrade) == 1 && strings.EqualFold(textproto.TrimString(upgrade[0]), "websocket")
}

// finish measures and logs the request and recycles its exchange.
func (p *Pipeline) finish(x *exchange) {
	x.endRequest()
	if p.obs != nil {
		p.obs.ObserveRequest(x.last, x.status, time.Since(x.start))
	}
	p.logAccess(x)
	x.reset()
	p.exchanges.Put(x)
}

func (p *Pipeline) authFailed(reason string) {
	if p.obs != nil {
		p.obs.AuthFailed(reason)
	}
}

// route is what a request's attempts share to choose their backends: its
// turn in the rotation and the backends tried, in order.
type route struct {
	turn  uint64 // index in the snapshot of the first attempt's backend
	tried []int  // backend IDs
}

// pick chooses the backend of a request's next attempt among those healthy
// now, and records it in r. The first attempt takes the balancer's choice
// (SPEC 3.3, 10): the next turn of the shared smooth weighted round-robin,
// or least_request's. Retries do not move the shared turn, so that first
// attempts keep their spread even while one backend fails every attempt:
// under round_robin they go on from the first attempt's backend to the
// next ones not tried; under least_request they take the least loaded
// backend not tried. ok is false when no healthy backend is left untried.
func (p *Pipeline) pick(r *route) (b messages.Backend, ok bool) {
	healthy := p.backends.Healthy()
	n := uint64(len(healthy))
	if n == 0 {
		return messages.Backend{}, false
	}
	if len(r.tried) == 0 {
		i := p.lb.first(healthy)
		r.turn = uint64(i)
		r.tried = append(r.tried, healthy[i].ID)
		return healthy[i], true
	}
	if p.lb.leastRequest.Load() {
		i := leastLoaded(healthy, r.tried)
		if i < 0 {
			return messages.Backend{}, false
		}
		r.tried = append(r.tried, healthy[i].ID)
		return healthy[i], true
	}
	start := r.turn + 1
	for i := range n {
		b = healthy[(start+i)%n]
		if !containsID(r.tried, b.ID) {
			r.tried = append(r.tried, b.ID)
			return b, true
		}
	}
	return messages.Backend{}, false
}

func containsID(ids []int, id int) bool {
	for _, v := range ids {
		if v == id {
			return true
		}
	}
	return false
}

// defaultRetryBuffer is MaxRetryBufferBytes when left 0.
const defaultRetryBuffer = 64 << 20

// maxRetryBodyLimit caps MaxRetryBodyBytes, so a misconfiguration cannot
// make one request buffer without bound.
const maxRetryBodyLimit = 1 << 30

// Transport tuning: Tollgate talks to a handful of backends with many
// concurrent requests each, so the idle pool per host is large. There is no
// ResponseHeaderTimeout: each attempt's clock (attempt) bounds the wait.
//
// idleConnTimeout is below the keep-alive timeouts common backends use
// (Node.js 5 s, Apache 5 s, gunicorn 2 s is the rare lower one): a
// connection the backend closes while idle races with Tollgate reusing it,
// and that race costs a failed attempt. Closing first, after 4 s of idle,
// avoids it for most backends, at the price of a reconnect after a lull.
const (
	dialTimeout         = 5 * time.Second
	maxIdleConnsPerHost = 512
	idleConnTimeout     = 4 * time.Second
)

func newTransport(dialTLS func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	if dialTLS != nil {
		// Counted like plain connections: bytes written before
		// encryption tell as well whether a request reached the wire.
		dialTLS = countingDial(dialTLS)
	}
	return &http.Transport{
		DialContext:           countingDial(d.DialContext),
		DialTLSContext:        dialTLS,
		MaxIdleConnsPerHost:   maxIdleConnsPerHost,
		IdleConnTimeout:       idleConnTimeout,
		DisableCompression:    true, // pass encodings through untouched
		ForceAttemptHTTP2:     false,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}
