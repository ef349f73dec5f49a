package pipeline

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// request_timeout bounds the wait for an answer's headers and then each
// gap between two reads of its body (SPEC 3.5), never the whole body: an
// event stream that keeps sending lives as long as it sends.
func TestEventStreamOutlivesRequestTimeout(t *testing.T) {
	// Margins wide enough for a loaded machine under -race: events come
	// every quarter of request_timeout.
	const (
		timeout = 600 * time.Millisecond
		every   = timeout / 4
		events  = 12 // 3 × request_timeout
	)
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := range events {
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
				return
			}
			_ = rc.Flush()
			select {
			case <-time.After(every):
			case <-r.Context().Done():
				return
			}
		}
	})
	h := newHarness(t, setup{backends: []string{b.URL}, opts: Options{RequestTimeout: timeout}})
	res, body := h.do(t, request{})
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, events, strings.Count(body, "data: "), "every event arrives")
}

// A backend that stops sending halfway is still cut off after
// request_timeout of silence.
func TestSilentBodyIsCutAfterRequestTimeout(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "part") // chunked: the proxy relays it at once
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done()
	})
	h := newHarness(t, setup{backends: []string{b.URL}, opts: Options{RequestTimeout: 200 * time.Millisecond}})
	res := h.send(t, request{})
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	got, err := io.ReadAll(res.Body)
	assert.Error(t, err, "the answer is cut, not completed")
	assert.Equal(t, "part", string(got))
}

// A client that stops sending its body gets a 408 and a closed
// connection, and nothing it started stays behind (SPEC 3.5): whether the
// body is streamed (too large to buffer) or buffered for retries.
func TestStalledUploadGets408(t *testing.T) {
	for _, tt := range []struct {
		name   string
		length int
	}{{"streamed", 4 << 20}, {"buffered", 100_000}} {
		t.Run(tt.name, func(t *testing.T) {
			const timeout = 300 * time.Millisecond
			b := newBackend(t, hashing(http.StatusOK))
			h := newHarness(t, setup{backends: []string{b.URL},
				opts: Options{RequestTimeout: timeout, MaxRetryBodyBytes: 1 << 20}})
			baseline := runtime.NumGoroutine()

			conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
			require.NoError(t, err)
			defer conn.Close()
			began := time.Now()
			_, err = fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: tollgate.test\r\nAuthorization: Bearer %s\r\n"+
				"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s",
				testKey, tt.length, strings.Repeat("u", 5000))
			require.NoError(t, err)
			// The rest never comes. The deadline keeps a regression from
			// hanging the suite.
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
			br := bufio.NewReader(conn)
			res, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			assertJSONError(t, res, string(body), http.StatusRequestTimeout, "request body timed out")
			// Loose: a few request_timeouts, not the 30 s of a hung request.
			assert.Less(t, time.Since(began), 20*timeout)
			_, err = br.ReadByte()
			assert.ErrorIs(t, err, io.EOF, "the connection is closed")
			assert.Empty(t, h.failures.hosts(), "the client's fault, not the backend's")

			conn.Close()
			waitGoroutines(t, baseline)
		})
	}
}

// Reading the client's body is bounded per gap, not in total: an upload
// that keeps sending lives past request_timeout (SPEC 3.5).
func TestSteadyUploadOutlivesRequestTimeout(t *testing.T) {
	for _, tt := range []struct {
		name    string
		maxBody int64
	}{{"streamed", 100}, {"buffered", 1 << 20}} {
		t.Run(tt.name, func(t *testing.T) {
			const timeout = 500 * time.Millisecond
			b := newBackend(t, hashing(http.StatusOK))
			h := newHarness(t, setup{backends: []string{b.URL},
				opts: Options{RequestTimeout: timeout, MaxRetryBodyBytes: tt.maxBody}})
			conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
			require.NoError(t, err)
			defer conn.Close()
			const chunks, size = 10, 100
			_, err = fmt.Fprintf(conn, "PUT /upload HTTP/1.1\r\nHost: t\r\nAuthorization: %s\r\nContent-Length: %d\r\n\r\n",
				testKey, chunks*size)
			require.NoError(t, err)
			for range chunks { // 3 × request_timeout in all
				_, err = io.WriteString(conn, strings.Repeat("s", size))
				require.NoError(t, err)
				time.Sleep(timeout * 3 / chunks) // the client's pace, not a wait for an event
			}
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
			res, err := http.ReadResponse(bufio.NewReader(conn), nil)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, res.StatusCode, string(body))
			assert.Equal(t, sha256Hex([]byte(strings.Repeat("s", chunks*size))), string(body))
		})
	}
}

// waitGoroutines waits until no more goroutines run than baseline.
func waitGoroutines(t *testing.T, baseline int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline, not waiting for an event
	}
}

// The attempt clock is touched by the attempt loop, the transport's writer
// and timer goroutines; under concurrent streams, uploads, timeouts and
// clients leaving, it must not race, leak or mix requests up. On a loaded
// machine any attempt may time out, so a 504 is accepted anywhere; an
// answer that did come must be whole and the right one.
func TestAttemptClockUnderLoad(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			for i := range 5 {
				_, _ = fmt.Fprintf(w, "data: %d\n\n", i)
				_ = http.NewResponseController(w).Flush()
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
		case "/slow":
			select {
			case <-time.After(300 * time.Millisecond):
			case <-r.Context().Done():
			}
		default:
			hashing(http.StatusOK)(w, r)
		}
	})
	h := newHarness(t, setup{backends: []string{b.URL},
		opts: Options{RequestTimeout: 100 * time.Millisecond, MaxRetryBodyBytes: 4096}})
	baseline := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 15 {
				switch (g + i) % 4 {
				case 0:
					res, body, err := h.try(request{path: "/stream"})
					if err == nil && res.StatusCode == http.StatusOK {
						assert.Equal(t, 5, strings.Count(body, "data: "))
					}
				case 1:
					res, _, err := h.try(request{path: "/slow"})
					if err == nil {
						assert.Equal(t, http.StatusGatewayTimeout, res.StatusCode)
					}
				case 2:
					payload := strings.Repeat(string(rune('a'+g)), 3000*(i%3+1)) // buffered and streamed
					res, body, err := h.try(request{method: http.MethodPost, path: "/up", body: strings.NewReader(payload)})
					if err == nil && res.StatusCode != http.StatusGatewayTimeout {
						assert.Equal(t, http.StatusOK, res.StatusCode)
						assert.Equal(t, sha256Hex([]byte(payload)), body)
					}
				default:
					ctx, cancel := context.WithCancel(t.Context())
					if res, err := h.trySend(request{path: "/stream", ctx: ctx}); err == nil {
						_, _ = bufio.NewReader(res.Body).ReadString('\n')
						res.Body.Close()
					}
					cancel()
				}
			}
		})
	}
	wg.Wait()
	h.client.CloseIdleConnections()
	h.p.CloseIdleConnections()
	waitGoroutines(t, baseline)
}

// try is do for goroutines other than the test's: errors are returned, not
// fatal (a stream cut by a timeout ends in an error).
func (h *harness) try(r request) (*http.Response, string, error) {
	res, err := h.trySend(r)
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res, string(b), err
}

func (h *harness) trySend(r request) (*http.Response, error) {
	if r.method == "" {
		r.method = http.MethodGet
	}
	if r.ctx == nil {
		r.ctx = context.Background()
	}
	req, err := http.NewRequestWithContext(r.ctx, r.method, h.url+r.path, r.body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+testKey)
	return h.client.Do(req)
}
