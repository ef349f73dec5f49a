package pipeline

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// Regressions found in review of the forwarding hardening (issue 12).

// SPEC 3.5: when every attempt failed, the last backend answer goes to the
// client. An answer too large to hold while retrying must not turn into
// Tollgate's own 502 when no retry is left to make.
func TestLargeFailedAnswerWithNothingLeftToTry(t *testing.T) {
	large := strings.Repeat("z", 128<<10)
	t.Run("a single backend's large 503 reaches the client whole", func(t *testing.T) {
		a := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("X-From", "a")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, large)
		})
		h := newHarness(t, setup{backends: []string{a.URL}, opts: Options{MaxRetries: 2}})
		res, body := h.do(t, request{})
		assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
		assert.Equal(t, "a", res.Header.Get("X-From"))
		assert.Equal(t, len(large), len(body), "the body is streamed whole")
		assert.EqualValues(t, 1, a.hits.Load())
	})
	t.Run("a large 503 then a timeout gives the 503, not a 504", func(t *testing.T) {
		a := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("X-From", "a")
			w.Header().Set("Content-Length", "131072")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, large)
		})
		slow := newBackend(t, func(_ http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
		})
		h := newHarness(t, setup{backends: []string{a.URL, slow.URL},
			opts: Options{MaxRetries: 1, RequestTimeout: 300 * time.Millisecond}})
		res, body := h.do(t, request{})
		require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
		assert.Equal(t, "a", res.Header.Get("X-From"), "the backend's headers stay")
		assert.Empty(t, body, "the body could not be held")
		assert.NotEqual(t, "131072", res.Header.Get("Content-Length"), "no Content-Length for a body not sent")
		assert.EqualValues(t, 1, slow.hits.Load(), "the retry happened")
	})
}

// transportFunc is an http.RoundTripper made of a function.
type transportFunc func(*http.Request) (*http.Response, error)

func (f transportFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// eventStream answers with events every gap until n were sent, stopping
// early when req's context ends. wg waits for its writer.
func eventStream(req *http.Request, n int, gap time.Duration, wg *sync.WaitGroup) *http.Response {
	pr, pw := io.Pipe()
	wg.Go(func() {
		for i := range n {
			if _, err := fmt.Fprintf(pw, "data: %d\n\n", i); err != nil {
				return
			}
			select {
			case <-time.After(gap):
			case <-req.Context().Done():
				pw.CloseWithError(req.Context().Err())
				return
			}
		}
		pw.Close()
	})
	return &http.Response{StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"text/event-stream"}}, ContentLength: -1, Body: pr, Request: req}
}

// A transport may read a streamed request body after the backend answered
// and the handler returned (http.Transport's write loop does). Such a read
// must not set a read deadline on the client's connection, which by then
// serves the next keep-alive request: that request's stream would be cut
// request_timeout later (the server's background read times out and
// cancels it).
func TestLateBodyReadSetsNoDeadlineOnTheNextRequest(t *testing.T) {
	const (
		timeout = 400 * time.Millisecond
		events  = 12
		gap     = timeout / 4 // 3 × request_timeout in all
	)
	var wg sync.WaitGroup
	late, lateDone := make(chan struct{}), make(chan error, 1)
	ctx := t.Context()
	tr := transportFunc(func(req *http.Request) (*http.Response, error) {
		if req.Method == http.MethodGet {
			return eventStream(req, events, gap, &wg), nil
		}
		// Answers at once; reads the body only when told, after the
		// handler returned.
		wg.Go(func() {
			select {
			case <-late:
			case <-ctx.Done():
				return
			}
			_, err := req.Body.Read(make([]byte, 16))
			lateDone <- err
		})
		return &http.Response{StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, ContentLength: 5, Body: io.NopCloser(strings.NewReader("early")), Request: req}, nil
	})
	h := newHarness(t, setup{backends: []string{"http://127.0.0.1:1"},
		opts: Options{Transport: tr, RequestTimeout: timeout, MaxRetryBodyBytes: 4}})
	t.Cleanup(wg.Wait) // after the server closed: every stream has ended

	res, body := h.do(t, request{method: http.MethodPut, body: strings.NewReader("0123456789")})
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "early", body)

	var reused atomic.Bool
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused.Store(i.Reused) }}
	stream := h.send(t, request{ctx: httptrace.WithClientTrace(t.Context(), trace)})
	defer stream.Body.Close()
	require.True(t, reused.Load(), "the second request rides the first one's connection")
	close(late)
	select {
	case err := <-lateDone:
		require.Error(t, err, "a read after the handler returned fails")
	case <-time.After(10 * time.Second):
		t.Fatal("the late read did not happen")
	}
	got, err := io.ReadAll(stream.Body)
	require.NoError(t, err, "the stream is not cut")
	assert.Equal(t, events, strings.Count(string(got), "data: "))
}

// A transport not built by New may never report its connections
// (httptrace's GotConn), so nothing tells whether a failed attempt
// reached the backend: it counts as sent, and a POST is not retried.
func TestForeignTransportFailuresCountAsSent(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		attempts int64
	}{
		{name: "POST is not retried", method: http.MethodPost, attempts: 1},
		{name: "PUT is retried", method: http.MethodPut, attempts: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int64
			tr := transportFunc(func(req *http.Request) (*http.Response, error) {
				calls.Add(1)
				if req.Body != nil {
					_, _ = io.Copy(io.Discard, req.Body) // it did reach the backend
					_ = req.Body.Close()
				}
				return nil, io.ErrUnexpectedEOF
			})
			h := newHarness(t, setup{backends: []string{"http://127.0.0.1:1", "http://127.0.0.1:2"},
				opts: Options{Transport: tr, MaxRetries: 1}})
			res, body := h.do(t, request{method: tt.method, body: strings.NewReader("payload")})
			assertJSONError(t, res, body, http.StatusBadGateway, "bad gateway")
			assert.Equal(t, tt.attempts, calls.Load())
		})
	}
}

// A zero MaxRetryBufferBytes is the default budget, not "hold none": an
// Options literal that leaves it out must not silently turn off retries
// for every request with a body. A negative value holds none.
func TestRetryBufferBytesZeroMeansDefault(t *testing.T) {
	bad := newBackend(t, hashing(http.StatusServiceUnavailable))
	ok := newBackend(t, hashing(http.StatusOK))
	bs := backendList(t, bad.URL, ok.URL)
	tests := []struct {
		name   string
		buffer int64
		limit  int64
		status int
	}{
		{name: "zero is the default", buffer: 0, limit: 64 << 20, status: http.StatusOK},
		{name: "negative holds none", buffer: -1, limit: 0, status: http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Options{
				Admitter:            fakeAdmitter{admit: admitTestKey},
				Backends:            fakeBackends{healthy: func() []messages.Backend { return bs }},
				MaxRetries:          1,
				MaxRetryBodyBytes:   1 << 20,
				MaxRetryBufferBytes: tt.buffer,
			})
			t.Cleanup(p.CloseIdleConnections)
			assert.Equal(t, tt.limit, p.retryBuffer.limit)
			req := httptest.NewRequestWithContext(t.Context(), http.MethodPut, "/", strings.NewReader("payload"))
			req.Header.Set("Authorization", testKey)
			rec := httptest.NewRecorder()
			p.ServeHTTP(rec, req)
			assert.Equal(t, tt.status, rec.Code)
			assert.Equal(t, sha256Hex([]byte("payload")), rec.Body.String())
		})
	}
}

// An empty chunked body whose every trailer was filtered out carries none
// of the client's trailers: the outbound request must not keep the
// client's map (it shares it with the inbound request).
func TestEmptyBodyDropsFilteredTrailers(t *testing.T) {
	t.Run("attach", func(t *testing.T) {
		r := newReplay(&bufferBudget{limit: 1 << 20})
		defer r.release()
		body := requestBody{replay: r}
		req := &http.Request{Trailer: http.Header{"X-Client-Id": {"admin"}}, ContentLength: -1,
			TransferEncoding: []string{"chunked"}}
		body.attach(req, nil)
		assert.Nil(t, req.Trailer)
		assert.Equal(t, http.NoBody, req.Body)
	})
	t.Run("end to end", func(t *testing.T) {
		got := make(chan *http.Request, 1)
		b := newBackend(t, func(_ http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			r.Header, r.Trailer = r.Header.Clone(), r.Trailer.Clone()
			got <- r
		})
		h := newHarness(t, setup{backends: []string{b.URL}})
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url, struct{ io.Reader }{strings.NewReader("")})
		require.NoError(t, err)
		req.Header.Set("Authorization", testKey)
		req.Trailer = http.Header{"X-Client-Id": {"admin"}, "Authorization": {"Bearer stolen"}}
		res, err := h.client.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
		seen := <-got
		assert.Equal(t, []string{testClientID}, seen.Header.Values("X-Client-Id"))
		// The server puts announced trailer names into Trailer's keys.
		assert.NotContains(t, seen.Trailer, "X-Client-Id", "neither announced nor sent")
		assert.NotContains(t, seen.Trailer, "Authorization", "neither announced nor sent")
	})
}

// A body with a declared length is read into one buffer of that size, up
// to 64 KiB, instead of growing from 4 KiB by doubling; a larger one
// starts at 64 KiB and grows as bytes arrive.
func TestReplayFirstBufferFollowsContentLength(t *testing.T) {
	tests := []struct {
		name       string
		size       int64
		firstOffer int
	}{
		{name: "small body, one read", size: 10_000, firstOffer: 10_000},
		{name: "large body starts bounded", size: 1 << 20, firstOffer: 64 << 10},
		{name: "unknown length starts small", size: -1, firstOffer: minBodyGrowth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &replay{budget: &bufferBudget{limit: 1 << 30}}
			r.refs.Store(1)
			defer r.release()
			n := max(tt.size, 5000)
			src := &offerRecorder{data: strings.Repeat("b", int(n))}
			complete, err := r.fill(src, tt.size, 2<<20)
			require.NoError(t, err)
			assert.True(t, complete)
			assert.Equal(t, tt.firstOffer, src.offered[0])
		})
	}
}
