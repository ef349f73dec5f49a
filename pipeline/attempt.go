package pipeline

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// errAttemptTimeout is the cause of an attempt's context when its backend
// kept silent for request_timeout. It wraps context.DeadlineExceeded, so
// callers that only ask "was it a timeout" need not know it.
var errAttemptTimeout = fmt.Errorf("pipeline: backend silent for request_timeout: %w", context.DeadlineExceeded)

// attempt is one try of a request on one backend. Its context ends when
// the backend stays silent for request_timeout (SPEC 3.5, like nginx's
// proxy_read_timeout): while the request is written and its answer's
// headers awaited, and then during each read of the answer's body. Time
// spent waiting on the client (its streamed body, a slow reader of the
// answer) does not count: the client's own read deadline bounds the first,
// and the second is the client's business. So a stream that keeps sending
// lives as long as it sends.
//
// The transport's write loop calls waitClient and sent from its own
// goroutine, possibly after the answer arrived; mu orders those with
// answered, after which only the goroutine reading the answer touches the
// timer.
type attempt struct {
	ctx     context.Context
	cancel  context.CancelCauseFunc
	timer   *time.Timer // nil without request_timeout
	timeout time.Duration

	mu       sync.Mutex
	answered bool // the answer's headers arrived

	body io.ReadCloser // the answer's body, read through the attempt
	url  url.URL       // the attempt request's URL
}

func newAttempt(parent context.Context, timeout time.Duration) *attempt {
	a := &attempt{timeout: timeout}
	a.ctx, a.cancel = context.WithCancelCause(parent)
	if timeout > 0 {
		a.timer = time.AfterFunc(timeout, a.expire)
	}
	return a
}

func (a *attempt) expire() { a.cancel(errAttemptTimeout) }

// timedOut reports whether the attempt ended for request_timeout.
func (a *attempt) timedOut() bool { return context.Cause(a.ctx) == errAttemptTimeout }

// waitClient stops the clock while the request's body waits on the client.
func (a *attempt) waitClient() { a.rearm(false) }

// sent restarts the clock: the request made progress, and the backend has
// another request_timeout to take the rest or to answer.
func (a *attempt) sent() { a.rearm(true) }

func (a *attempt) rearm(on bool) {
	if a.timer == nil {
		return
	}
	a.mu.Lock()
	if !a.answered {
		if on {
			a.timer.Reset(a.timeout)
		} else {
			a.timer.Stop()
		}
	}
	a.mu.Unlock()
}

// answer takes res's body over: from now on the clock runs only while the
// body is read. A 101's body is the connection itself, which the upgrade
// needs unwrapped; the attempt ends there, as request_timeout does not
// bound a tunnel.
func (a *attempt) answer(res *http.Response) {
	if a.timer != nil {
		a.mu.Lock()
		a.answered = true
		a.timer.Stop()
		a.mu.Unlock()
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		a.end()
		return
	}
	a.body = res.Body
	if a.body == nil {
		a.body = http.NoBody
	}
	res.Body = a
}

// Read reads the answer's body, within request_timeout.
func (a *attempt) Read(p []byte) (int, error) {
	if a.timer == nil {
		return a.body.Read(p)
	}
	a.timer.Reset(a.timeout)
	n, err := a.body.Read(p)
	a.timer.Stop()
	return n, err
}

// Close closes the answer's body and ends the attempt.
func (a *attempt) Close() error {
	err := a.body.Close() // first, so a fully read connection goes back to the pool
	a.end()
	return err
}

// end stops the clock and releases the attempt's context.
func (a *attempt) end() {
	if a.timer != nil {
		a.timer.Stop()
	}
	a.cancel(nil)
}

// countingConn is a backend connection that counts the bytes written to
// it, so the attempt loop can tell a request that reached the wire from one
// that did not (SPEC 3.5: only the latter may be retried when not
// idempotent). Error types cannot tell: a dial cut short by the attempt's
// deadline returns the deadline's error, a stale keep-alive connection the
// transport's own.
type countingConn struct {
	net.Conn
	written atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// countingDial wraps dial's connections in countingConn.
func countingDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c}, nil
	}
}

// wire is what an attempt's GotConn hook learned of its connection. The
// transport calls GotConn on the goroutine running RoundTrip, before it
// returns, so the attempt loop reads these plain fields safely.
type wire struct {
	connected bool          // the attempt got a connection
	conn      *countingConn // nil when the transport is not ours
	before    int64         // conn's count when the attempt got it
}

// gotConn is the GotConn hook of every attempt.
func (x *exchange) gotConn(info httptrace.GotConnInfo) {
	c := info.Conn
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok { // TLS
		c = tc.NetConn()
	}
	cc, _ := c.(*countingConn)
	x.wire = wire{connected: true, conn: cc}
	if cc != nil {
		x.wire.before = cc.written.Load()
	}
}

// wrote reports whether the attempt wrote any byte of its request. With a
// transport not built by New, any connection counts as written to.
func (w *wire) wrote() bool {
	if !w.connected {
		return false
	}
	return w.conn == nil || w.conn.written.Load() > w.before
}
