package pipeline

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// exchange is the state of one request in flight. Exchanges are pooled,
// with what forward needs for every request (the outbound request
// template) and a ReverseProxy for protocol upgrades, whose Rewrite,
// Transport and ErrorHandler are bound to it once, at creation. An
// exchange is used by one request at a time; nothing keeps a reference to
// it after ServeHTTP returns: the response body is closed before, attempt
// requests reference only their own URLs and body readers, and the
// per-request 1xx relay goes inert when the attempts end.
type exchange struct {
	p        *Pipeline
	proxy    httputil.ReverseProxy // for protocol upgrades; see forward
	body     attemptBody           // wraps the delivered response's body
	triedBuf [8]int
	// Bound once: GotConn hooks of forward's traces and of upgrades'.
	gotConnHook  func(httptrace.GotConnInfo)
	upgradeTrace httptrace.ClientTrace

	// forward's outbound request template, which attempts copy.
	out   http.Request
	url   url.URL
	base  context.Context // attempts' parent: the request's, with the 1xx relay
	relay *relay1xx       // nil on the ReverseProxy path

	// Per request; reset clears them.
	in       *http.Request
	w        http.ResponseWriter // set once the request is forwarded
	start    time.Time
	vals     *headerVals
	idVal    []string // X-Request-Id value: the client's, or vals[valRequestID]
	admitted bool
	route    route            // the request's turn and the backends tried
	wire     wire             // what the current attempt's connection saw
	last     messages.Backend // the backend whose answer or failure counts
	backend  string           // its host, for the log
	attempts int
	// Counters held, given back by endAttempt and endRequest (gateway.go).
	load     *messages.BackendLoad // the attempt's place in its backend's in flight
	retrying bool                  // the attempt is a retry within the budget
	inBudget bool                  // the request counts in the budget's requests
	status   int
	bytes    int64 // body bytes of an error reply; proxied ones count in body
	err      error // why the request failed, for the log
}

func newExchange(p *Pipeline) *exchange {
	x := &exchange{p: p}
	x.gotConnHook = x.gotConn
	x.upgradeTrace.GotConn = x.gotConnHook
	x.proxy = httputil.ReverseProxy{
		Rewrite:      x.rewrite,
		Transport:    x,
		ErrorHandler: x.errorHandler,
		BufferPool:   &p.buffers,
		// The proxy logs only a broken response stream; route it through
		// slog with this request's ID.
		ErrorLog: log.New(x, "", 0),
		// Upgrades only. 0: the proxy flushes at once for streamed
		// (unknown-length) and event-stream answers, and lets the server's
		// write buffers batch fixed-length ones.
		FlushInterval: 0,
	}
	return x
}

// begin readies x for request r.
func (x *exchange) begin(r *http.Request) {
	x.in = r
	x.start = time.Now()
	x.vals = new(headerVals)
	x.idVal = x.p.ids.requestID(r.Header, x.vals)
	x.route = route{tried: x.triedBuf[:0]}
}

// reset drops every reference to the finished request.
func (x *exchange) reset() {
	x.in = nil
	x.w = nil
	x.vals = nil
	x.idVal = nil
	x.admitted = false
	x.route = route{}
	x.wire = wire{}
	x.last = messages.Backend{}
	x.backend = ""
	x.attempts = 0
	x.status = 0
	x.bytes = 0
	x.err = nil
	x.body = attemptBody{}
	x.out = http.Request{}
	x.url = url.URL{}
	x.base = nil
	x.relay = nil
}

func (x *exchange) requestID() string { return x.idVal[0] }
func (x *exchange) clientID() string  { return x.vals[valClientID] }

// admit records the Admitter's decision for the response headers.
func (x *exchange) admit(d messages.Decision) {
	x.vals.setDecision(d)
	x.admitted = true
}

// stamp sets the headers every answer carries: X-Request-Id, and the
// rate-limit headers once the request was admitted or refused.
func (x *exchange) stamp(h http.Header) {
	h[hdrRequestID] = x.idVal
	if x.admitted {
		x.vals.stamp(h)
	}
}

// reply answers the client with e.
func (x *exchange) reply(w http.ResponseWriter, e *errorReply) {
	x.stamp(w.Header())
	x.status = e.status
	x.bytes = int64(len(e.body))
	e.write(w)
}

// fail answers the client according to err.
func (x *exchange) fail(w http.ResponseWriter, err error) {
	x.err = err
	x.reply(w, replyFor(err, x.in.Context().Err() == context.Canceled))
}

// errorHandler is the proxy's ErrorHandler: it runs when RoundTrip returns
// an error, before anything was written to the client.
func (x *exchange) errorHandler(w http.ResponseWriter, _ *http.Request, err error) {
	x.fail(w, err)
}

// rewrite is the proxy's Rewrite. The proxy has already removed hop-by-hop
// and client-sent forwarding headers; the backend URL is set per attempt.
func (x *exchange) rewrite(pr *httputil.ProxyRequest) {
	for k := range pr.Out.Header {
		if spoofable(k) {
			delete(pr.Out.Header, k)
		}
	}
	x.rewriteHeader(pr.In, pr.Out.Header)
}

// rewriteHeader sets the outbound headers of in: X-Forwarded-*, the
// client and request IDs, and removes what must not reach a backend.
func (x *exchange) rewriteHeader(in *http.Request, h http.Header) {
	x.setForwarded(in, h)
	// A buffered body was read already, the server answering the client's
	// 100-continue itself; asking the backend again would only cost a
	// round trip per attempt. A streamed body puts it back (streamed).
	delete(h, "Expect")
	h[hdrClientID] = x.vals.one(valClientID)
	h[hdrRequestID] = x.idVal
}

// setForwarded does what ProxyRequest.SetXForwarded does, without its
// three allocations: the values live in the request's headerVals. As
// there, the client's own X-Forwarded-* headers are not trusted: the proxy
// removed them before Rewrite.
func (x *exchange) setForwarded(in *http.Request, h http.Header) {
	if ip, _, err := net.SplitHostPort(in.RemoteAddr); err == nil {
		x.vals[valForwardedFor] = ip
		h[hdrForwardedFor] = x.vals.one(valForwardedFor)
	}
	x.vals[valForwardedHost] = in.Host
	h[hdrForwardedHost] = x.vals.one(valForwardedHost)
	if in.TLS == nil {
		h[hdrForwardedProto] = protoHTTP
	} else {
		h[hdrForwardedProto] = protoHTTPS
	}
}

// Write receives the proxy's ErrorLog lines.
func (x *exchange) Write(line []byte) (int, error) {
	x.logProxyError(errors.New(strings.TrimSpace(string(line))))
	return len(line), nil
}

// logProxyError logs a failure to relay an answer already under way.
func (x *exchange) logProxyError(err error) {
	x.p.logger.LogAttrs(x.in.Context(), slog.LevelWarn, "proxy error",
		slog.String("request_id", x.requestID()),
		slog.String("client_id", x.clientID()),
		slog.String("backend", x.backend),
		slog.String("err", err.Error()),
	)
}
