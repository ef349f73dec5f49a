package pipeline

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Regression tests for issue 12 (forwarding hardening) and issue 11 item 9
// (round-robin in step with failures).

// First attempts take turns even while one backend fails every attempt:
// retries do not move the turn (SPEC 3.3).
func TestFirstAttemptsAlternateWhileOneBackendFails(t *testing.T) {
	bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
	good := newBackend(t, answering(http.StatusOK, "ok"))
	h := newHarness(t, setup{backends: []string{bad.URL, good.URL}, opts: Options{MaxRetries: 1}})
	const n = 100
	for range n {
		res, body := h.do(t, request{})
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Equal(t, "ok", body)
	}
	assert.EqualValues(t, n/2, bad.hits.Load(), "the failing backend gets every other first attempt, no more")
	assert.EqualValues(t, n, good.hits.Load(), "half first attempts, half retries")
}

func TestRetriesNeverRepeatABackendWhileAnotherIsUntried(t *testing.T) {
	bs := []*backend{
		newBackend(t, answering(http.StatusServiceUnavailable, "a")),
		newBackend(t, answering(http.StatusServiceUnavailable, "b")),
		newBackend(t, answering(http.StatusServiceUnavailable, "c")),
	}
	h := newHarness(t, setup{backends: []string{bs[0].URL, bs[1].URL, bs[2].URL}, opts: Options{MaxRetries: 5}})
	for range 6 {
		res, _ := h.do(t, request{})
		require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	}
	for _, b := range bs {
		assert.EqualValues(t, 6, b.hits.Load(), "each backend once per request")
	}
}

// Request trailers get the header rules (SPEC 3.4), for streamed and for
// buffered bodies.
func TestRequestTrailersAreFiltered(t *testing.T) {
	for _, tt := range []struct {
		name string
		size int
	}{{"streamed", 2 << 20}, {"buffered", 100}} {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan http.Header, 1)
			b := newBackend(t, func(_ http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				got <- r.Trailer.Clone()
			})
			h := newHarness(t, setup{backends: []string{b.URL}, opts: Options{MaxRetryBodyBytes: 1 << 20}})
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url,
				struct{ io.Reader }{strings.NewReader(strings.Repeat("t", tt.size))})
			require.NoError(t, err)
			req.Header.Set("Authorization", testKey)
			req.Trailer = http.Header{
				"X-Client-Id":     {"admin"},
				"Authorization":   {"Bearer stolen"},
				"X-Forwarded-For": {"10.0.0.1"},
				"X_client_id":     {"admin"},
				"X-Checksum":      {"c0ffee"},
			}
			res, err := h.client.Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			require.Equal(t, http.StatusOK, res.StatusCode)
			seen := <-got
			for _, k := range []string{"X-Client-Id", "Authorization", "X-Forwarded-For", "X_client_id"} {
				assert.Empty(t, seen.Values(k), k)
			}
			assert.Equal(t, "c0ffee", seen.Get("X-Checksum"), "other trailers pass")
		})
	}
}

// Header names that read as ours once '_' is '-' never reach a backend
// (CGI-style backends merge them with ours), nor do other X-Forwarded-*.
func TestLookAlikeHeadersAreDropped(t *testing.T) {
	got := make(chan http.Header, 1)
	b := newBackend(t, func(_ http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() })
	h := newHarness(t, setup{backends: []string{b.URL}})
	res, _ := h.do(t, request{header: http.Header{
		"X_Client_Id":       {"admin"},
		"X_forwarded_for":   {"6.6.6.6"},
		"X-Forwarded-Port":  {"1"},
		"X-Forwarded_Proto": {"gopher"},
		"X_Request_Id":      {"forged"},
		"Forwarded":         {"for=6.6.6.6"},
		"X-Clientid":        {"kept"},
	}})
	require.Equal(t, http.StatusOK, res.StatusCode)
	seen := <-got
	for _, k := range []string{"X_Client_Id", "X_forwarded_for", "X-Forwarded-Port", "X-Forwarded_Proto", "X_Request_Id", "Forwarded"} {
		assert.Empty(t, seen[k], k)
	}
	assert.Equal(t, []string{testClientID}, seen.Values("X-Client-Id"))
	assert.Equal(t, "kept", seen.Get("X-Clientid"))
}

func TestSpoofable(t *testing.T) {
	for k, want := range map[string]bool{
		"Authorization": true, "AUTHORIZATION": true, "X-Client-Id": true, "x_client_id": true,
		"X-Request-Id": true, "X_Request-ID": true, "Forwarded": true, "X-Forwarded-For": true,
		"X_FORWARDED_HOST": true, "X-Forwarded-Anything": true,
		"X-Forwarded-": false, "X-Client-Ids": false, "Content-Type": false, "X": false, "": false,
		"Authorisation": false, "Forwarded-For": false,
	} {
		assert.Equal(t, want, spoofable(k), k)
	}
}

// blackholeDial makes dials to addr hang, as to a backend dropping SYNs,
// until the test ends.
func blackholeDial(t *testing.T, p *Pipeline, addr string) {
	t.Helper()
	tr := p.transport.(*http.Transport)
	dial := tr.DialContext
	gone := make(chan struct{})
	t.Cleanup(func() { close(gone) })
	tr.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		if a == addr {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-gone:
				return nil, fmt.Errorf("dial %s: test over", a)
			}
		}
		return dial(ctx, network, a)
	}
}

// A dial cut short by request_timeout sent nothing: a POST goes on to the
// next backend, and the unreachable one is marked at once (SPEC 3.5, 3.6).
func TestPostAfterDialTimeoutIsRetried(t *testing.T) {
	ok := newBackend(t, hashing(http.StatusOK))
	const black = "127.0.0.1:1" // never dialled for real
	h := newHarness(t, setup{backends: []string{"http://" + black, ok.URL},
		opts: Options{MaxRetries: 1, RequestTimeout: 200 * time.Millisecond}})
	blackholeDial(t, h.p, black)
	res, body := h.do(t, request{method: http.MethodPost, body: strings.NewReader("payload")})
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, sha256Hex([]byte("payload")), body)
	assert.Equal(t, []string{black}, h.failures.hosts(), "passive mark")
}

// A failed TLS handshake sent nothing either (the error is no dial
// error, which is how the old rule told).
func TestPostAfterTLSHandshakeFailureIsRetried(t *testing.T) {
	plain := newBackend(t, answering(http.StatusOK, "plain")) // speaks no TLS
	ok := newBackend(t, hashing(http.StatusOK))
	tlsURL := strings.Replace(plain.URL, "http://", "https://", 1)
	h := newHarness(t, setup{backends: []string{tlsURL, ok.URL}, opts: Options{MaxRetries: 1}})
	res, body := h.do(t, request{method: http.MethodPost, body: strings.NewReader("payload")})
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, sha256Hex([]byte("payload")), body)
	assert.Equal(t, []string{strings.TrimPrefix(tlsURL, "https://")}, h.failures.hosts(), "passive mark")
}

// resetConn is a connection the peer resets before it takes any byte.
type resetConn struct{ net.Conn }

func (c resetConn) Write([]byte) (int, error) {
	return 0, &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}
}

// A connection that took no byte of the request sent nothing, whatever
// its error says: a POST goes on to the next backend.
func TestPostOnAConnectionThatTookNoByteIsRetried(t *testing.T) {
	a := newBackend(t, answering(http.StatusOK, "a"))
	ok := newBackend(t, hashing(http.StatusOK))
	aAddr := strings.TrimPrefix(a.URL, "http://")
	h := newHarness(t, setup{backends: []string{a.URL, ok.URL}, opts: Options{MaxRetries: 1}})
	var d net.Dialer
	h.p.transport.(*http.Transport).DialContext = countingDial(func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err == nil && addr == aAddr {
			return resetConn{c}, nil
		}
		return c, err
	})
	res, body := h.do(t, request{method: http.MethodPost, body: strings.NewReader("payload")})
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, sha256Hex([]byte("payload")), body)
	assert.Zero(t, a.hits.Load())
	assert.Equal(t, []string{aAddr}, h.failures.hosts(), "passive mark")
}

// "Sent" is what reached the connection.
func TestWireWrote(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() { _, _ = io.Copy(io.Discard, c2) }()
	cc := &countingConn{Conn: c1}
	_, err := cc.Write([]byte("GET / HTTP/1.1\r\n"))
	require.NoError(t, err)

	assert.False(t, (&wire{}).wrote(), "no connection")
	w := wire{connected: true, conn: cc, before: cc.written.Load()}
	assert.False(t, w.wrote(), "a reused connection nothing was written to")
	_, err = cc.Write([]byte("x"))
	require.NoError(t, err)
	assert.True(t, w.wrote())
	assert.True(t, (&wire{connected: true}).wrote(), "a foreign transport's connection counts as written")
}

// A 1xx must not undo Connection: close set before forwarding (the
// smuggling guard after chunked requests).
func TestConnectionCloseSurvivesEarlyHints(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "ok")
	})
	h := newHarness(t, setup{backends: []string{b.URL}, wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			next.ServeHTTP(w, r)
		})
	}})
	res, body := h.do(t, request{})
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "ok", body)
	assert.True(t, res.Close, "Connection: close reached the client")
	assert.Empty(t, res.Header.Get("Link"))
	assert.Equal(t, "20", res.Header.Get("X-RateLimit-Limit"))
}

// Expect: 100-continue on a streamed body goes to the backend, whose
// answer decides whether the client uploads (SPEC 3.4).
func TestExpectContinueReachesBackendForStreamedBody(t *testing.T) {
	t.Run("backend refuses at once", func(t *testing.T) {
		gotExpect := make(chan string, 1)
		b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
			gotExpect <- r.Header.Get("Expect")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
		})
		h := newHarness(t, setup{backends: []string{b.URL}, opts: Options{MaxRetryBodyBytes: 1024}})
		conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
		require.NoError(t, err)
		defer conn.Close()
		_, err = fmt.Fprintf(conn, "POST /up HTTP/1.1\r\nHost: t\r\nAuthorization: %s\r\n"+
			"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n", testKey)
		require.NoError(t, err)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		assert.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode, "no 100 Continue first")
		assert.Equal(t, "100-continue", <-gotExpect)
	})
	t.Run("backend accepts", func(t *testing.T) {
		b := newBackend(t, hashing(http.StatusOK))
		h := newHarness(t, setup{backends: []string{b.URL}, opts: Options{MaxRetryBodyBytes: 1024}})
		h.client.Transport.(*http.Transport).ExpectContinueTimeout = 10 * time.Second
		payload := strings.Repeat("p", 5000)
		res, body := h.do(t, request{method: http.MethodPost, body: strings.NewReader(payload),
			header: http.Header{"Expect": {"100-continue"}}})
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, sha256Hex([]byte(payload)), body)
	})
}

func TestConnectAndForeignUpgradesAreRefused(t *testing.T) {
	b := newBackend(t, answering(http.StatusOK, "ok"))
	h := newHarness(t, setup{backends: []string{b.URL}})
	addr := strings.TrimPrefix(h.url, "http://")
	tests := []struct {
		name, raw string
		status    int
	}{
		{"CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nAuthorization: " + testKey + "\r\n\r\n", 405},
		{"h2c", "GET / HTTP/1.1\r\nHost: t\r\nAuthorization: " + testKey +
			"\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", 400},
		{"websocket and more", "GET / HTTP/1.1\r\nHost: t\r\nAuthorization: " + testKey +
			"\r\nConnection: Upgrade\r\nUpgrade: websocket, foo\r\n\r\n", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer conn.Close()
			_, err = io.WriteString(conn, tt.raw)
			require.NoError(t, err)
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
			res, err := http.ReadResponse(bufio.NewReader(conn), nil)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			assert.Equal(t, tt.status, res.StatusCode)
			assert.Equal(t, tt.status, jsonCode(t, body))
			if tt.status == 405 {
				assert.NotEmpty(t, res.Header.Get("Allow"))
			}
		})
	}
	assert.Zero(t, b.hits.Load())
	assert.Zero(t, h.admits.Load(), "refused before admission: no token spent")
}

func jsonCode(t *testing.T, body []byte) int {
	t.Helper()
	var e struct{ Code int }
	require.NoError(t, jsonUnmarshal(body, &e), string(body))
	return e.Code
}

// An empty Idempotency-Key promises nothing: a POST that got an answer is
// not retried.
func TestEmptyIdempotencyKeyDoesNotRetry(t *testing.T) {
	bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
	ok := newBackend(t, answering(http.StatusOK, "ok"))
	h := newHarness(t, setup{backends: []string{bad.URL, ok.URL}, opts: Options{MaxRetries: 1}})
	res, body := h.do(t, request{method: http.MethodPost, body: strings.NewReader("x"),
		header: http.Header{"Idempotency-Key": {""}}})
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.Equal(t, "busy", body)
	assert.Zero(t, ok.hits.Load())
}

// A client that goes away mid-answer is logged as 499, not with the
// backend's status.
func TestClientGoneMidStreamIsLogged499(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			if _, err := io.WriteString(w, "data: x\n\n"); err != nil {
				return
			}
			_ = http.NewResponseController(w).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	logs := &logBuffer{}
	h := newHarness(t, setup{backends: []string{b.URL}, opts: Options{Logger: newLogger(logs)}})
	ctx, cancel := context.WithCancel(t.Context())
	res := h.send(t, request{ctx: ctx})
	_, err := bufio.NewReader(res.Body).ReadString('\n')
	require.NoError(t, err)
	cancel()
	res.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), `"msg":"client closed request"`) {
		require.True(t, time.Now().Before(deadline), "no access line: %s", logs.String())
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
	for _, l := range logs.lines(t) {
		if l["msg"] == "client closed request" {
			assert.EqualValues(t, 499, l["status"])
		}
	}
}

// The declared Content-Length is not allocated before the bytes arrive.
func TestReplayGrowsAsBytesArrive(t *testing.T) {
	budget := &bufferBudget{limit: 1 << 30}
	r := newReplay(budget)
	src := &offerRecorder{data: "abc"}
	_, err := r.fill(src, 128<<20, 128<<20)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.NotEmpty(t, src.offered)
	assert.LessOrEqual(t, src.offered[0], 64<<10, "first read offered %d bytes", src.offered[0])
	assert.LessOrEqual(t, budget.used.Load(), int64(64<<10))
	r.release()
	assert.Zero(t, budget.used.Load())
}

// offerRecorder returns data, then EOF, recording the buffer sizes offered.
type offerRecorder struct {
	data    string
	offered []int
}

func (o *offerRecorder) Read(p []byte) (int, error) {
	o.offered = append(o.offered, len(p))
	if o.data == "" {
		return 0, io.EOF
	}
	n := copy(p, o.data)
	o.data = o.data[n:]
	return n, nil
}

// Bodies held for retries across requests stay under MaxRetryBufferBytes;
// past it a body streams, intact but without retry.
func TestRetryBufferBudget(t *testing.T) {
	bad := newBackend(t, hashing(http.StatusServiceUnavailable))
	ok := newBackend(t, hashing(http.StatusOK))
	h := newHarness(t, setup{backends: []string{bad.URL, ok.URL},
		opts: Options{MaxRetries: 1, MaxRetryBufferBytes: 16 << 10}})
	small, big := randomBytes(t, 1000), randomBytes(t, 40<<10)

	res, body := h.do(t, request{method: http.MethodPut, body: strings.NewReader(string(small))})
	assert.Equal(t, http.StatusOK, res.StatusCode, "within the budget: retried")
	assert.Equal(t, sha256Hex(small), body)

	h.p.lb.next.Store(0)
	res, body = h.do(t, request{method: http.MethodPut, body: strings.NewReader(string(big))})
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "over the budget: streamed once")
	assert.Equal(t, sha256Hex(big), body, "intact")

	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, h.url, strings.NewReader(string(big[:9000])))
			if !assert.NoError(t, err) {
				return
			}
			req.Header.Set("Authorization", testKey)
			res, err := h.client.Do(req)
			if !assert.NoError(t, err) {
				return
			}
			got, _ := io.ReadAll(res.Body)
			res.Body.Close()
			assert.Equal(t, sha256Hex(big[:9000]), string(got))
		})
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for h.p.retryBuffer.used.Load() != 0 {
		require.True(t, time.Now().Before(deadline), "budget not given back: %d", h.p.retryBuffer.used.Load())
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
	peak := h.p.retryBuffer.peak.Load()
	assert.Positive(t, peak, "bodies were held")
	assert.LessOrEqual(t, peak, h.p.retryBuffer.limit, "never more held at once than the budget")
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// Idle backend connections must close before common backends close them
// (Node.js and Apache: 5 s), or reusing one races with its close.
func TestIdleConnTimeoutBelowCommonBackendKeepAlive(t *testing.T) {
	tr := newTransport(nil)
	defer tr.CloseIdleConnections()
	assert.Less(t, tr.IdleConnTimeout, 5*time.Second)
	assert.Positive(t, tr.IdleConnTimeout)
}
