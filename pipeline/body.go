package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// requestBody is how a request's body is sent on each attempt: replayed
// from memory, or streamed once.
type requestBody struct {
	replay  *replay       // buffered: every attempt reads it afresh
	stream  io.ReadCloser // over MaxRetryBodyBytes: one attempt only
	client  *clientBody   // the client's body, nil when there is none
	trailer http.Header   // a replayed body's filtered trailers, nil if none
}

// prepareBody reads a body of at most MaxRetryBodyBytes into memory so
// that retries can send it again. A body declared larger is streamed
// untouched; one found larger while reading, or one the retry buffer
// budget cannot take, is streamed as the part read so far followed by the
// rest. Every read of the client's body waits at most timeout.
func (x *exchange) prepareBody(out *http.Request, timeout time.Duration) (requestBody, error) {
	if out.Body == nil || out.Body == http.NoBody {
		return requestBody{}, nil
	}
	p := x.p
	cb := newClientBody(out.Body, x.w, timeout)
	if p.streams(out) {
		return x.streamed(out, cb, cb), nil
	}
	r := newReplay(&p.retryBuffer)
	complete, err := r.fill(cb, out.ContentLength, p.maxBody)
	if err != nil {
		r.release()
		if isTimeout(err) {
			return requestBody{}, fmt.Errorf("%w: %w", errBodyTimeout, err)
		}
		return requestBody{}, fmt.Errorf("%w: %w", errRequestBody, err)
	}
	if complete {
		// Read whole, so out.Trailer holds what the client sent.
		return requestBody{replay: r, client: cb, trailer: filteredTrailer(out.Trailer)}, nil
	}
	prefix := r.open()
	r.release() // the prefix reader holds the buffer now
	return x.streamed(out, &splicedBody{Reader: io.MultiReader(prefix, cb), closer: prefix}, cb), nil
}

// streamed sends body once, as it arrives. Trailers the client declared
// pass filtered, copied in when the body ends; Expect: 100-continue goes
// on when no byte was read yet, so the backend's answer decides whether
// the client sends its body (SPEC 3.4).
func (x *exchange) streamed(out *http.Request, body io.ReadCloser, cb *clientBody) requestBody {
	if out.Trailer != nil {
		// Declared keys that pass are announced; values come at the end.
		cb.trailerIn, cb.trailerOut = out.Trailer, make(http.Header, len(out.Trailer))
		for k := range out.Trailer {
			if trailerPasses(k) {
				cb.trailerOut[k] = nil
			}
		}
		out.Trailer = cb.trailerOut
	}
	if cb.read == 0 {
		if v := x.in.Header["Expect"]; len(v) > 0 {
			out.Header["Expect"] = v
		}
	}
	return requestBody{stream: body, client: cb}
}

// streams reports whether out's body goes to the backend as it arrives,
// unbuffered and not replayable: it may be larger than MaxRetryBodyBytes.
func (p *Pipeline) streams(out *http.Request) bool {
	return p.maxBody == 0 || out.ContentLength > p.maxBody
}

// clientBody is the client's request body. Each read waits at most
// request_timeout (SPEC 3.5), by the connection's read deadline: a client
// that stops sending would otherwise hold its connection, a goroutine and
// the transport's write loop for as long as it likes. It keeps the first
// read error, the client's fault (a malformed chunk, a body shorter than
// its Content-Length, a hang-up, a stall), so that the failed attempt does
// not blame the backend: marking it down would let any client with a key
// take every backend out with a few broken uploads. While streaming, the
// transport reads it on its own goroutine, hence the atomic.
type clientBody struct {
	rc      io.ReadCloser
	guard   *guardedBody             // rc when forward's; nil on the upgrade path
	ctl     *http.ResponseController // nil: no deadline to set
	timeout time.Duration
	at      *attempt // the streaming attempt; nil while buffering
	read    int64    // bytes read; only before streaming starts
	err     atomic.Pointer[error]

	// Trailers of a streamed body: the client's, and the filtered map the
	// outbound request carries, filled when the body ends.
	trailerIn, trailerOut http.Header
}

// newClientBody wraps rc, read by the handler writing to w.
func newClientBody(rc io.ReadCloser, w http.ResponseWriter, timeout time.Duration) *clientBody {
	c := &clientBody{rc: rc, timeout: timeout}
	c.guard, _ = rc.(*guardedBody)
	if timeout > 0 && w != nil {
		c.ctl = http.NewResponseController(w)
		// Also clears a leftover deadline; the server sets none of its own
		// for bodies (no ReadTimeout).
		if c.ctl.SetReadDeadline(time.Time{}) != nil {
			c.ctl = nil // not a net/http server's writer: nothing to bound
		}
	}
	return c
}

func (c *clientBody) Read(p []byte) (int, error) {
	if c.at != nil {
		c.at.waitClient()
	}
	n, err := c.readWithin(p)
	c.read += int64(n)
	switch {
	case err == io.EOF:
		if c.ctl != nil {
			// The server now reads ahead for the next request; our
			// deadline must not cut that read.
			c.clearDeadline()
		}
		for k, vv := range c.trailerIn {
			if trailerPasses(k) {
				c.trailerOut[k] = vv
			}
		}
	case err != nil:
		// The deadline stays: the server then gives up on what is left
		// of the body and closes the connection.
		c.err.CompareAndSwap(nil, &err)
	}
	if c.at != nil {
		c.at.sent()
	}
	return n, err
}

func (c *clientBody) Close() error { return c.rc.Close() }

// readWithin reads from rc within the read deadline. Through forward's
// guardedBody the deadline is set only while the handler runs.
func (c *clientBody) readWithin(p []byte) (int, error) {
	switch {
	case c.ctl == nil:
		return c.rc.Read(p)
	case c.guard != nil:
		return c.guard.readWithin(p, c.ctl, c.timeout)
	}
	_ = c.ctl.SetReadDeadline(time.Now().Add(c.timeout))
	return c.rc.Read(p)
}

func (c *clientBody) clearDeadline() {
	if c.guard != nil {
		c.guard.clearDeadline(c.ctl)
		return
	}
	_ = c.ctl.SetReadDeadline(time.Time{})
}

// isTimeout reports whether err is a read deadline passing.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// clientErr returns the error reading the client's body, if any.
func (b *requestBody) clientErr() error {
	if b.client == nil {
		return nil
	}
	if err := b.client.err.Load(); err != nil {
		return *err
	}
	return nil
}

// replayable reports whether the body can be sent more than once.
func (b *requestBody) replayable() bool { return b.stream == nil }

// release gives up the loop's hold on a buffered body.
func (b *requestBody) release() {
	if b.replay != nil {
		b.replay.release()
	}
}

// attach sets the body of one attempt's request.
func (b *requestBody) attach(req *http.Request, at *attempt) {
	switch {
	case b.replay != nil && len(b.replay.buf) == 0 && b.trailer == nil:
		// An empty chunked body: say so plainly. Its trailers all failed
		// the filter, and req.Trailer is still the client's map.
		req.Body, req.ContentLength, req.TransferEncoding = http.NoBody, 0, nil
		req.Trailer = nil
	case b.replay != nil:
		req.Body = b.replay.open()
		// GetBody lets the transport resend on a stale keep-alive
		// connection without spending one of our attempts.
		req.GetBody = b.replay.getBody
		req.ContentLength = int64(len(b.replay.buf))
		req.TransferEncoding = nil
		req.Trailer = b.trailer
		if b.trailer != nil {
			req.ContentLength = -1 // trailers need chunked framing
		}
	case b.stream != nil:
		// One attempt only, which starts after this: the transport's
		// writer sees at.
		b.client.at = at
		req.Body = b.stream
	}
}

// maxPooledBody is the largest buffer kept for reuse; bigger ones, rare,
// go to the garbage collector rather than pin memory in the pool.
const maxPooledBody = 64 << 10

var replays = sync.Pool{New: func() any { return new(replay) }}

// bufferBudget caps the bytes of request bodies held in memory for
// retries, across all requests in flight (MaxRetryBufferBytes): past it,
// bodies stream without retry instead of growing the heap without bound
// under many concurrent uploads.
type bufferBudget struct {
	limit int64
	used  atomic.Int64
	peak  atomic.Int64 // the most used ever granted; tests hold it to limit
}

func (b *bufferBudget) take(n int64) bool {
	used := b.used.Add(n)
	if used > b.limit {
		b.used.Add(-n)
		return false
	}
	for p := b.peak.Load(); used > p && !b.peak.CompareAndSwap(p, used); p = b.peak.Load() {
	}
	return true
}

func (b *bufferBudget) give(n int64) { b.used.Add(-n) }

// replay is a request body held in memory. http.Transport may still read a
// request body after RoundTrip returns, so the buffer is reference
// counted: the attempt loop holds one reference and every open reader one,
// and the buffer returns to the pool when the last is released.
type replay struct {
	buf    []byte
	refs   atomic.Int32
	budget *bufferBudget
	held   int64 // bytes of budget taken: cap(buf) once filling began
}

func newReplay(budget *bufferBudget) *replay {
	r := replays.Get().(*replay)
	r.refs.Store(1)
	r.budget = budget
	return r
}

func (r *replay) release() {
	if r.refs.Add(-1) != 0 {
		return
	}
	r.budget.give(r.held)
	r.held, r.budget = 0, nil
	if cap(r.buf) <= maxPooledBody {
		r.buf = r.buf[:0]
		replays.Put(r)
	}
}

// minBodyGrowth is the first allocation for a body of unknown length, and
// the least step.
const minBodyGrowth = 4 << 10

// maxBodyStart bounds the first allocation for a body of declared length.
const maxBodyStart = 64 << 10

// fill reads the body: size bytes when known, else up to limit+1 so that
// a body over the limit shows itself. The buffer grows as bytes arrive,
// never more than 64 KiB ahead of them on the word of a Content-Length,
// and only as far as the budget allows. complete reports that the whole
// body, at most limit bytes, is in r.buf; otherwise r.buf holds its first
// part.
func (r *replay) fill(src io.Reader, size, limit int64) (complete bool, err error) {
	want, step := limit+1, int64(minBodyGrowth)
	if size >= 0 {
		// A small declared body takes one buffer of its size, not a
		// series of doublings from 4 KiB.
		want, step = size, max(min(size, maxBodyStart), minBodyGrowth)
	}
	buf := r.buf[:0]
	for int64(len(buf)) < want {
		room := min(int64(cap(buf)), want)
		if len(buf) == cap(buf) {
			room = min(max(2*int64(cap(buf)), step), want)
		}
		if r.held < room {
			if !r.budget.take(room - r.held) {
				r.buf = buf
				return false, nil // over budget: stream the rest
			}
			r.held = room
		}
		if int64(cap(buf)) < room {
			nb := make([]byte, len(buf), room)
			copy(nb, buf)
			buf = nb
		}
		n, err := src.Read(buf[len(buf):room])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.buf = buf
			return false, err
		}
	}
	r.buf = buf
	if size >= 0 && int64(len(buf)) < size {
		return false, io.ErrUnexpectedEOF
	}
	return int64(len(buf)) <= limit, nil
}

// open returns a new reader of the whole body, holding a reference.
func (r *replay) open() *replayReader {
	r.refs.Add(1)
	return &replayReader{r: r}
}

func (r *replay) getBody() (io.ReadCloser, error) { return r.open(), nil }

// replayReader reads a replay. Its mutex makes Close wait for a Read in
// flight, so no Read touches the buffer once it may be back in the pool.
type replayReader struct {
	mu     sync.Mutex
	r      *replay
	off    int
	closed bool
}

func (rr *replayReader) Read(p []byte) (int, error) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if rr.off >= len(rr.r.buf) {
		return 0, io.EOF
	}
	n := copy(p, rr.r.buf[rr.off:])
	rr.off += n
	return n, nil
}

func (rr *replayReader) Close() error {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if !rr.closed {
		rr.closed = true
		rr.r.release()
	}
	return nil
}

// splicedBody is a body read partly into memory: the part read, then the
// rest. Closing it releases the part read; the rest is the client's body,
// which the proxy closes.
type splicedBody struct {
	io.Reader
	closer io.Closer
}

func (s *splicedBody) Close() error { return s.closer.Close() }

// attemptBody is the body of the delivered answer: the attempt's, whose
// Close ends the attempt. It counts the bytes relayed, for the access log.
type attemptBody struct {
	rc io.ReadCloser
	n  int64
}

func (b *attemptBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n += int64(n)
	return n, err
}

func (b *attemptBody) Close() error { return b.rc.Close() }

// maxHeldAnswer is the largest failed answer kept in memory while another
// backend is tried, to be returned if every attempt fails.
const maxHeldAnswer = 64 << 10

// errAnswerTooLarge: a failed answer too large to hold, closed unread.
var errAnswerTooLarge = errors.New("pipeline: failed answer too large to hold")

// holdAnswer reads a failed answer's body into memory and ends its
// attempt, so the answer can be returned after later attempts. An answer
// over maxHeldAnswer, or one whose body fails, is closed and an error
// returned; res then keeps its status and headers with an empty body, so
// it can still be the last answer (SPEC 3.5).
func holdAnswer(res *http.Response) error {
	if res.ContentLength > maxHeldAnswer {
		_ = res.Body.Close()
		dropBody(res)
		return errAnswerTooLarge
	}
	buf, err := io.ReadAll(io.LimitReader(res.Body, maxHeldAnswer+1))
	_ = res.Body.Close() // read to the end, failed, or dropped: nothing to report
	if err == nil && len(buf) > maxHeldAnswer {
		err = errAnswerTooLarge
	}
	if err != nil {
		dropBody(res)
		return err
	}
	res.Body = io.NopCloser(bytes.NewReader(buf))
	return nil
}

// dropBody empties the body of an answer whose body was not kept. The
// headers that describe that body would lie about the empty one.
func dropBody(res *http.Response) {
	res.Body, res.ContentLength, res.Trailer = http.NoBody, 0, nil
	res.TransferEncoding = nil
	delete(res.Header, "Content-Length")
	delete(res.Header, "Content-Encoding")
}

// copyBuffers is the proxy's BufferPool: the stock proxy allocates a 32 KiB
// buffer per response. It pools array pointers, so Put does not allocate.
type copyBuffers struct{ pool sync.Pool }

const copyBufferSize = 32 << 10

func (c *copyBuffers) Get() []byte {
	if b, ok := c.pool.Get().(*[copyBufferSize]byte); ok {
		return b[:]
	}
	return new([copyBufferSize]byte)[:]
}

func (c *copyBuffers) Put(b []byte) {
	if len(b) == copyBufferSize {
		c.pool.Put((*[copyBufferSize]byte)(b))
	}
}
