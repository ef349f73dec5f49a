package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Deliberate differences from httputil.ReverseProxy, which forward
// otherwise follows rule for rule:
//   - request_timeout bounds each attempt's silences (the wait for the
//     answer's headers, then each gap between reads of its body), not the
//     whole exchange; the client's body reads get the same bound, by the
//     connection's read deadline (SPEC 3.5);
//   - failed attempts are retried on other backends, and whether a request
//     was sent is read off the connection's byte count, not error types;
//   - the client's Authorization, X-Client-Id, Forwarded and X-Forwarded-*
//     (also spelled with '_') never pass, in headers or trailers; request
//     trailers are filtered like headers;
//   - Expect: 100-continue passes only with a streamed body: a buffered one
//     was already read, after the server answered 100 itself;
//   - CONNECT is refused (405) and only the websocket upgrade passes (400);
//   - 1xx answers are relayed without touching the final answer's headers
//     (Connection: close survives);
//   - a client gone mid-answer is logged as 499, not as the backend's status.

// forward sends an admitted request to the backends and streams the answer
// back. It does for every request but a protocol upgrade what
// httputil.ReverseProxy does, in the same order and with the same rules,
// without the per-request copies the stock proxy makes because it cannot
// know who owns what: the outbound header map shares the inbound value
// slices (nobody writes to them), the outbound request template lives in
// the exchange, and the backend's header values move into the answer
// instead of being copied one by one. Upgrades go through the
// ReverseProxy, whose hijack-and-splice code is worth reusing.
//
// What the transport may still touch after RoundTrip returns (the request
// body, the 1xx hook) is allocated per request, never pooled: a late call
// must find its own request, not the next one to use this exchange.
func (x *exchange) forward(w http.ResponseWriter, r *http.Request, upgrade bool) {
	if upgrade {
		x.base = httptrace.WithClientTrace(r.Context(), &x.upgradeTrace)
		x.proxy.ServeHTTP(w, r)
		return
	}
	out, body := x.outbound(r)
	if body != nil {
		// Reading the client's body after the handler returns is not
		// allowed; the transport may try while it still writes a request
		// whose answer came early.
		defer body.Close()
	}
	res, err := x.RoundTrip(out)
	x.relay.end()
	if err != nil {
		x.fail(w, err)
		return
	}
	x.respond(w, r, res)
}

// outbound turns r into the template every attempt copies: hop-by-hop and
// client-sent forwarding headers removed, Tollgate's added, the body
// shielded from the transport's Close, the 1xx relay in the attempts'
// parent context.
func (x *exchange) outbound(r *http.Request) (*http.Request, *guardedBody) {
	// Room for the headers rewriteHeader adds, so the map does not grow.
	h := make(http.Header, len(r.Header)+5)
	for k, vv := range r.Header {
		if !spoofable(k) {
			h[k] = vv
		}
	}
	wantsTrailers := containsToken(h["Te"], "trailers")
	removeHopByHop(h)
	if wantsTrailers {
		// Tell the backend the client can take trailers, as the stock
		// proxy does (Go issue 21096).
		h["Te"] = teTrailers
	}
	x.rewriteHeader(r, h)
	if _, ok := h["User-Agent"]; !ok {
		// Send no User-Agent rather than the Go client's default.
		h["User-Agent"] = emptyValue
	}

	x.url = *r.URL
	x.url.RawQuery = cleanQuery(x.url.RawQuery)
	out := &x.out
	*out = *r
	out.Header = h
	out.URL = &x.url
	out.RequestURI = ""
	out.Close = false
	var body *guardedBody
	switch {
	case r.ContentLength == 0:
		out.Body = nil // lets the transport retry a request on a stale connection
	case r.Body != nil:
		body = &guardedBody{rc: r.Body}
		out.Body = body
	}
	x.relay = &relay1xx{x: x}
	x.relay.trace.Got1xxResponse = x.relay.got1xx
	x.relay.trace.GotConn = x.gotConnHook
	x.base = httptrace.WithClientTrace(r.Context(), &x.relay.trace)
	return out, body
}

// respond streams res to the client, then its trailers.
func (x *exchange) respond(w http.ResponseWriter, r *http.Request, res *http.Response) {
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Only an upgrade request may be answered with 101, and those go
		// through the ReverseProxy.
		_ = res.Body.Close()
		x.fail(w, fmt.Errorf("%w: backend switched protocols unasked", errBadGateway))
		return
	}
	removeHopByHop(res.Header)
	h := w.Header()
	for k, vv := range res.Header {
		if old, ok := h[k]; ok {
			h[k] = append(old, vv...)
		} else {
			h[k] = vv // res is ours and dropped after this
		}
	}
	// The transport moves a "Trailer" header into res.Trailer's keys;
	// announce them again.
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)

	if err := x.copyBody(w, res); err != nil {
		_ = res.Body.Close()
		if errors.Is(err, errClientGone) || r.Context().Err() != nil {
			x.status = statusClientClosed // the backend's status never reached anyone
		}
		// Nothing better to do halfway through a streamed answer than to
		// abort it, which the server does for this panic without a log
		// line. Outside a server (tests), the stock proxy just returns.
		if r.Context().Value(http.ServerContextKey) != nil {
			panic(http.ErrAbortHandler)
		}
		return
	}
	_ = res.Body.Close() // now, to populate res.Trailer

	if len(res.Trailer) > 0 {
		// Force chunking, so the server sends trailers rather than
		// computing a Content-Length for a short body.
		_ = http.NewResponseController(w).Flush()
	}
	if len(res.Trailer) == announced {
		copyHeader(h, res.Trailer)
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			h.Add(k, v)
		}
	}
}

// copyBody copies the answer's body to the client. Answers of unknown
// length and event streams stream: their headers go out at once, before
// the backend sends a byte of body (an event stream may wait minutes for
// its first event), and every read is flushed. Others ride the server's
// write buffer. Flush errors are ignored, as the stock proxy does: a
// writer that cannot flush still delivers, and a dead client fails the
// next Write.
func (x *exchange) copyBody(w http.ResponseWriter, res *http.Response) error {
	var flush func() error
	if res.ContentLength == -1 || isEventStream(res.Header) {
		flush = http.NewResponseController(w).Flush
		_ = flush()
	}
	buf := x.p.buffers.Get()
	defer x.p.buffers.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return fmt.Errorf("%w: %w", errClientGone, werr)
			}
			if flush != nil {
				_ = flush()
			}
		}
		switch {
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			if !errors.Is(rerr, context.Canceled) {
				x.logProxyError(fmt.Errorf("read error during body copy: %w", rerr))
			}
			return rerr
		}
	}
}

// errClientGone: writing the answer to the client failed.
var errClientGone = errors.New("pipeline: client gone")

// relay1xx relays a request's informational answers (100 Continue, 103
// Early Hints) to its client while its attempts run. The transport calls
// got1xx on its own goroutine, possibly late, for an attempt already given
// up: the lock orders it with the attempt loop's last look at the
// writer's headers, and once done it touches nothing, so it never reaches
// x after x moved on to another request.
type relay1xx struct {
	trace httptrace.ClientTrace
	x     *exchange
	mu    sync.Mutex
	done  bool
}

func (rl *relay1xx) got1xx(code int, header textproto.MIMEHeader) error {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.done {
		return nil
	}
	// The server sends the writer's header map with a 1xx and does not
	// clear it after. The 1xx carries the backend's headers alone, and the
	// final answer's (ours, and a Connection: close guarding against
	// smuggling) are put back as they were. Rare, so the copy is fine.
	h := rl.x.w.Header()
	saved := maps.Clone(h)
	clear(h)
	for k, vv := range header {
		if !isHopByHop(k) {
			h[k] = vv
		}
	}
	rl.x.w.WriteHeader(code)
	clear(h)
	maps.Copy(h, saved)
	return nil
}

// end stops the relay: the final answer is about to be written.
func (rl *relay1xx) end() {
	rl.mu.Lock()
	rl.done = true
	rl.mu.Unlock()
}

// guardedBody is the client's request body as the transport sees it. Its
// Close does not close the client's body: the transport closes a request
// body when an attempt fails, and closing the server's body could wait for
// a client still to send it (100-continue); the server closes it after the
// handler. Once closed (by the transport, or when the handler is done),
// reads fail, as with the stock proxy's body.
//
// The client connection's read deadline (clientBody) is set and cleared
// under mu, and only while not closed: the transport may read after the
// handler returned, when the connection may already serve the next
// keep-alive request, whose reads a stale deadline would cut.
type guardedBody struct {
	rc     io.ReadCloser
	mu     sync.Mutex
	closed bool
}

var errBodyAfterHandler = errors.New("pipeline: request body read after its handler returned")

func (b *guardedBody) Read(p []byte) (int, error) { return b.readWithin(p, nil, 0) }

// readWithin reads, first setting ctl's read deadline timeout from now
// when ctl is not nil.
func (b *guardedBody) readWithin(p []byte, ctl *http.ResponseController, timeout time.Duration) (int, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, errBodyAfterHandler
	}
	if ctl != nil {
		_ = ctl.SetReadDeadline(time.Now().Add(timeout))
	}
	b.mu.Unlock()
	return b.rc.Read(p)
}

// clearDeadline clears ctl's read deadline unless the handler is done.
func (b *guardedBody) clearDeadline(ctl *http.ResponseController) {
	b.mu.Lock()
	if !b.closed {
		_ = ctl.SetReadDeadline(time.Time{})
	}
	b.mu.Unlock()
}

func (b *guardedBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

var (
	teTrailers = []string{"trailers"}
	emptyValue = []string{""}
)

// hopByHop are the headers of one connection, never forwarded (RFC 9110
// 7.6.1), beside those a Connection header names.
var hopByHop = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func isHopByHop(k string) bool {
	for _, h := range hopByHop {
		if strings.EqualFold(k, h) {
			return true
		}
	}
	return false
}

// spoofable reports whether a header name the client sent poses as one
// only Tollgate sets, so it must not reach a backend (SPEC 3.4): its own
// key (Authorization), X-Client-Id, X-Request-Id, Forwarded and
// X-Forwarded-*. Names are compared with '_' read as '-', because
// CGI-style backends (CGI, WSGI, Rack) turn both into HTTP_X_CLIENT_ID.
// The client's X-Request-Id, when sane, goes on under Tollgate's name.
func spoofable(k string) bool {
	if len(k) < len("Forwarded") {
		return false
	}
	switch k[0] | 0x20 {
	case 'a':
		return len(k) == len("authorization") && lookAlike(k, "authorization")
	case 'f':
		return len(k) == len("forwarded") && lookAlike(k, "forwarded")
	case 'x':
		return len(k) == len("x-client-id") && lookAlike(k, "x-client-id") ||
			len(k) == len("x-request-id") && lookAlike(k, "x-request-id") ||
			len(k) > len("x-forwarded-") && lookAlike(k[:len("x-forwarded-")], "x-forwarded-")
	}
	return false
}

// lookAlike reports whether s equals lower, of the same length, ignoring
// ASCII case and reading '_' as '-'.
func lookAlike(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' {
			c = '-'
		} else if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// trailerPasses reports whether a request trailer may reach the backend:
// the same rule as headers (SPEC 3.4).
func trailerPasses(k string) bool { return !spoofable(k) && !isHopByHop(k) }

// filteredTrailer returns the trailers of t that pass, nil if none does.
func filteredTrailer(t http.Header) http.Header {
	var out http.Header
	for k, vv := range t {
		if len(vv) == 0 || !trailerPasses(k) {
			continue
		}
		if out == nil {
			out = make(http.Header, len(t))
		}
		out[k] = vv
	}
	return out
}

func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

// containsToken reports whether a comma-separated header contains token,
// compared case-insensitively.
func containsToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.EqualFold(strings.TrimSpace(ct), "text/event-stream")
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// cleanQuery drops a query the backend could parse differently from us,
// as the stock proxy does: one with a semicolon or a malformed escape is
// re-encoded from what url.ParseQuery accepts of it.
func cleanQuery(q string) string {
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			return reencodeQuery(q)
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return reencodeQuery(q)
			}
			i += 3
		default:
			i++
		}
	}
	return q
}

func reencodeQuery(q string) string {
	v, _ := url.ParseQuery(q) // keeps what parses: the point
	return v.Encode()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
