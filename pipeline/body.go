package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// requestBody is how a request's body is sent on each attempt: replayed
// from memory, or streamed once.
type requestBody struct {
	replay *replay       // buffered: every attempt reads it afresh
	stream io.ReadCloser // over MaxRetryBodyBytes: one attempt only
	client *clientBody   // the client's part of stream, nil when replayed
}

// prepareBody reads a body of at most p.maxBody bytes into memory so that
// retries can send it again. A body declared larger is streamed untouched;
// one found larger while reading is streamed as the part read so far
// followed by the rest.
func (p *Pipeline) prepareBody(out *http.Request) (requestBody, error) {
	if out.Body == nil || out.Body == http.NoBody {
		return requestBody{}, nil
	}
	if p.streams(out) {
		cb := &clientBody{ReadCloser: out.Body}
		return requestBody{stream: cb, client: cb}, nil
	}
	r := newReplay()
	if err := r.fill(out.Body, out.ContentLength, p.maxBody); err != nil {
		r.release()
		return requestBody{}, fmt.Errorf("%w: %w", errRequestBody, err)
	}
	if int64(len(r.buf)) <= p.maxBody {
		return requestBody{replay: r}, nil
	}
	prefix := r.open()
	r.release() // the prefix reader holds the buffer now
	cb := &clientBody{ReadCloser: out.Body}
	return requestBody{stream: &splicedBody{Reader: io.MultiReader(prefix, cb), closer: prefix}, client: cb}, nil
}

// streams reports whether out's body goes to the backend as it arrives,
// unbuffered and not replayable: it may be larger than MaxRetryBodyBytes.
func (p *Pipeline) streams(out *http.Request) bool {
	return p.maxBody == 0 || out.ContentLength > p.maxBody
}

// bufferBody is prepareBody with the client's reads bounded by timeout: a
// client trickling its body would otherwise hold a connection and a
// goroutine for as long as it likes before any attempt, whose deadline
// would bound it, has begun. A body streamed to the backend instead is read
// during the attempt, under its deadline.
func (x *exchange) bufferBody(out *http.Request, timeout time.Duration) (requestBody, error) {
	if timeout <= 0 || out.Body == nil || out.Body == http.NoBody || x.p.streams(out) || x.w == nil {
		return x.p.prepareBody(out)
	}
	rc := http.NewResponseController(x.w)
	if rc.SetReadDeadline(time.Now().Add(timeout)) != nil {
		return x.p.prepareBody(out) // not a net/http server's writer: nothing to bound
	}
	body, err := x.p.prepareBody(out)
	if err != nil {
		// The deadline stays: before answering, the server reads what is
		// left of a small body to keep the connection, and would wait for
		// this client forever; past the deadline it gives up and closes.
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: %w", errBodyTimeout, err)
		}
		return body, err
	}
	_ = rc.SetReadDeadline(time.Time{}) // the server's own read timeouts again
	return body, nil
}

// clientBody is the client's body as it streams to a backend. It keeps the
// first read error, the client's fault (a malformed chunk, a body shorter
// than its Content-Length, a hang-up), so that the failed attempt does not
// blame the backend: marking it down would let any client with a key take
// every backend out with a few broken uploads. The transport reads the
// body on its own goroutine, hence the atomic.
type clientBody struct {
	io.ReadCloser
	err atomic.Pointer[error]
}

func (c *clientBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		c.err.CompareAndSwap(nil, &err)
	}
	return n, err
}

// clientErr returns the error reading the client's streamed body, if any.
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
func (b *requestBody) attach(req *http.Request) {
	switch {
	case b.replay != nil && len(b.replay.buf) == 0:
		// An empty chunked body: say so plainly.
		req.Body, req.ContentLength, req.TransferEncoding = http.NoBody, 0, nil
	case b.replay != nil:
		req.Body = b.replay.open()
		// GetBody lets the transport resend on a stale keep-alive
		// connection without spending one of our attempts.
		req.GetBody = b.replay.getBody
		req.ContentLength = int64(len(b.replay.buf))
		req.TransferEncoding = nil
	case b.stream != nil:
		req.Body = b.stream
	}
}

// maxPooledBody is the largest buffer kept for reuse; bigger ones, rare,
// go to the garbage collector rather than pin memory in the pool.
const maxPooledBody = 64 << 10

var replays = sync.Pool{New: func() any { return new(replay) }}

// replay is a request body held in memory. http.Transport may still read a
// request body after RoundTrip returns, so the buffer is reference
// counted: the attempt loop holds one reference and every open reader one,
// and the buffer returns to the pool when the last is released.
type replay struct {
	buf  []byte
	refs atomic.Int32
}

func newReplay() *replay {
	r := replays.Get().(*replay)
	r.refs.Store(1)
	return r
}

func (r *replay) release() {
	if r.refs.Add(-1) != 0 {
		return
	}
	if cap(r.buf) <= maxPooledBody {
		r.buf = r.buf[:0]
		replays.Put(r)
	}
}

// fill reads the body: size bytes when known, else up to limit+1 so that
// a body over the limit shows itself.
func (r *replay) fill(src io.Reader, size, limit int64) error {
	want := limit + 1
	if size >= 0 {
		want = size
	}
	buf := r.buf[:0]
	if size >= 0 {
		buf = slices.Grow(buf, int(size))
	}
	for int64(len(buf)) < want {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, int(min(int64(max(cap(buf), 4096)), want-int64(len(buf)))))
		}
		n, err := src.Read(buf[len(buf):int(min(int64(cap(buf)), want))])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.buf = buf
			return err
		}
	}
	r.buf = buf
	if size >= 0 && int64(len(buf)) < size {
		return io.ErrUnexpectedEOF
	}
	return nil
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

// attemptBody is the body of the delivered answer. Closing it ends the
// attempt's context, whose deadline covers reading the body. It counts the
// bytes relayed, for the access log.
type attemptBody struct {
	rc     io.ReadCloser
	cancel context.CancelFunc
	n      int64
}

func (b *attemptBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n += int64(n)
	return n, err
}

func (b *attemptBody) Close() error {
	err := b.rc.Close() // first, so a fully read connection goes back to the pool
	b.cancel()
	return err
}

// maxHeldAnswer is the largest failed answer kept in memory while another
// backend is tried, to be returned if every attempt fails.
const maxHeldAnswer = 64 << 10

// errAnswerTooLarge: a failed answer too large to hold; holdAnswer gave it
// back whole (read part, then the rest) and the loop returns it as is.
var errAnswerTooLarge = errors.New("pipeline: failed answer too large to hold")

// holdAnswer reads a failed answer's body into memory and ends its
// attempt, so the answer can be returned after later attempts. On a read
// error the answer is closed and the error returned.
func holdAnswer(res *http.Response, cancel context.CancelFunc) error {
	buf, err := io.ReadAll(io.LimitReader(res.Body, maxHeldAnswer+1))
	if err == nil && len(buf) > maxHeldAnswer {
		res.Body = &splicedBody{Reader: io.MultiReader(bytes.NewReader(buf), res.Body), closer: res.Body}
		return errAnswerTooLarge
	}
	_ = res.Body.Close() // read to the end or failed: nothing to report
	cancel()
	if err != nil {
		return err
	}
	res.Body = io.NopCloser(bytes.NewReader(buf))
	return nil
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
