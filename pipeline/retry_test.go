package pipeline

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestShouldRetry(t *testing.T) {
	dial := failure{kind: failConn, sent: false}
	reset := failure{kind: failConn, sent: true}
	timeout := failure{kind: failTimeout, sent: true}
	answer := failure{kind: failAnswer, sent: true}
	canceled := failure{kind: failCanceled, sent: true}
	tests := []struct {
		name   string
		method string
		key    bool
		f      failure
		want   bool
	}{
		{"GET answer", "GET", false, answer, true},
		{"GET timeout", "GET", false, timeout, true},
		{"GET reset", "GET", false, reset, true},
		{"HEAD answer", "HEAD", false, answer, true},
		{"OPTIONS answer", "OPTIONS", false, answer, true},
		{"PUT answer", "PUT", false, answer, true},
		{"DELETE timeout", "DELETE", false, timeout, true},
		{"TRACE reset", "TRACE", false, reset, true},
		{"POST dial", "POST", false, dial, true},
		{"POST answer", "POST", false, answer, false},
		{"POST timeout", "POST", false, timeout, false},
		{"POST reset", "POST", false, reset, false},
		{"PATCH answer", "PATCH", false, answer, false},
		{"PATCH dial", "PATCH", false, dial, true},
		{"POST answer with key", "POST", true, answer, true},
		{"PATCH timeout with key", "PATCH", true, timeout, true},
		{"lower-case get is not GET", "get", false, answer, false},
		{"GET canceled", "GET", false, canceled, false},
		{"POST canceled with key", "POST", true, canceled, false},
		{"GET success", "GET", true, failure{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, shouldRetry(tt.method, tt.key, tt.f))
		})
	}
}

func FuzzShouldRetry(f *testing.F) {
	f.Add("GET", false, uint8(failAnswer), true)
	f.Add("POST", false, uint8(failConn), false)
	f.Add("POST", true, uint8(failTimeout), true)
	f.Add("PATCH", false, uint8(failCanceled), true)
	f.Fuzz(func(t *testing.T, method string, key bool, kind uint8, sent bool) {
		fl := failure{kind: failKind(kind), sent: sent}
		got := shouldRetry(method, key, fl)
		isFailure := fl.kind == failConn || fl.kind == failTimeout || fl.kind == failAnswer
		switch {
		case !isFailure && got:
			t.Fatalf("retried %+v, which is not a backend failure", fl)
		case isFailure && !sent && !got:
			t.Fatalf("%s not retried though nothing was sent", method)
		case sent && got && !key && !idempotent(method):
			t.Fatalf("%s retried after the request was sent", method)
		case isFailure && (key || idempotent(method)) && !got:
			t.Fatalf("%s (key %v) not retried after %+v", method, key, fl)
		}
	})
}

func TestRetryPolicy(t *testing.T) {
	t.Run("GETs pass a backend answering 503", func(t *testing.T) {
		bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
		ok1 := newBackend(t, answering(http.StatusOK, "ok"))
		ok2 := newBackend(t, answering(http.StatusOK, "ok"))
		h := newHarness(t, setup{backends: []string{bad.URL, ok1.URL, ok2.URL}, opts: Options{MaxRetries: 2}})
		for range 30 {
			res, body := h.do(t, request{})
			require.Equal(t, http.StatusOK, res.StatusCode)
			require.Equal(t, "ok", body)
		}
		assert.Positive(t, bad.hits.Load())
		assert.Empty(t, h.failures.hosts(), "an answer is no connection failure")
	})
	t.Run("POST that got an answer is not retried", func(t *testing.T) {
		bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
		ok := newBackend(t, answering(http.StatusOK, "ok"))
		h := newHarness(t, setup{backends: []string{bad.URL, ok.URL}, opts: Options{MaxRetries: 2}})
		for _, method := range []string{http.MethodPost, http.MethodPatch} {
			res, body := h.do(t, request{method: method, body: strings.NewReader("x")})
			assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
			assert.Equal(t, "busy", body, "the client gets the backend's answer")
			h.p.lb.next.Store(0) // start at bad again
		}
		assert.Zero(t, ok.hits.Load())
	})
	t.Run("POST to a refused connection is retried", func(t *testing.T) {
		dead := deadURL(t)
		ok := newBackend(t, hashing(http.StatusOK))
		h := newHarness(t, setup{backends: []string{dead, ok.URL}, opts: Options{MaxRetries: 1}})
		res, body := h.do(t, request{method: http.MethodPost, body: strings.NewReader("payload")})
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, sha256Hex([]byte("payload")), body)
		assert.Equal(t, []string{strings.TrimPrefix(dead, "http://")}, h.failures.hosts())
	})
	t.Run("POST with Idempotency-Key is retried", func(t *testing.T) {
		bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
		ok := newBackend(t, hashing(http.StatusOK))
		h := newHarness(t, setup{backends: []string{bad.URL, ok.URL}, opts: Options{MaxRetries: 1}})
		res, body := h.do(t, request{method: http.MethodPost, body: strings.NewReader("payload"),
			header: http.Header{"Idempotency-Key": {"k-1"}}})
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, sha256Hex([]byte("payload")), body, "the body is replayed intact")
		assert.EqualValues(t, 1, bad.hits.Load())
	})
}

func TestRequestBodies(t *testing.T) {
	const limit = 1 << 20
	big := randomBytes(t, 2<<20)
	atLimit := randomBytes(t, limit)
	tests := []struct {
		name    string
		body    []byte
		chunked bool // hide the length so the client sends it chunked
		retried bool
	}{
		{name: "small body is replayed", body: []byte("hello, world"), retried: true},
		{name: "small chunked body is replayed", body: []byte("hello, world"), chunked: true, retried: true},
		{name: "body at the limit is replayed", body: atLimit, chunked: true, retried: true},
		{name: "large body is streamed once", body: big},
		{name: "large chunked body is streamed once", body: big, chunked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := newBackend(t, hashing(http.StatusServiceUnavailable))
			ok := newBackend(t, hashing(http.StatusOK))
			h := newHarness(t, setup{
				backends: []string{bad.URL, ok.URL},
				opts:     Options{MaxRetries: 1, MaxRetryBodyBytes: limit},
			})
			var body io.Reader = bytes.NewReader(tt.body)
			if tt.chunked {
				body = struct{ io.Reader }{body}
			}
			// PUT is idempotent: only the body's size can stop a retry.
			res, got := h.do(t, request{method: http.MethodPut, body: body})
			assert.Equal(t, sha256Hex(tt.body), got, "the body arrives intact")
			if tt.retried {
				assert.Equal(t, http.StatusOK, res.StatusCode)
				assert.EqualValues(t, 1, ok.hits.Load())
			} else {
				assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
				assert.Zero(t, ok.hits.Load())
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	// slow reads the body first: only then can the server notice that the
	// proxy gave up and end r.Context().
	slow := func(_ http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}
	t.Run("a slow backend is passed over", func(t *testing.T) {
		s := newBackend(t, slow)
		fast := newBackend(t, answering(http.StatusOK, "fast"))
		h := newHarness(t, setup{backends: []string{s.URL, fast.URL},
			opts: Options{MaxRetries: 1, RequestTimeout: 300 * time.Millisecond}})
		res, body := h.do(t, request{})
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, "fast", body)
		assert.Empty(t, h.failures.hosts(), "a timeout does not eject")
	})
	t.Run("504 when every backend is slow", func(t *testing.T) {
		s1, s2 := newBackend(t, slow), newBackend(t, slow)
		h := newHarness(t, setup{backends: []string{s1.URL, s2.URL},
			opts: Options{MaxRetries: 1, RequestTimeout: 200 * time.Millisecond}})
		res, body := h.do(t, request{})
		assertJSONError(t, res, body, http.StatusGatewayTimeout, "gateway timeout")
		assert.EqualValues(t, 1, s1.hits.Load())
		assert.EqualValues(t, 1, s2.hits.Load())
	})
	t.Run("a POST that timed out is not retried", func(t *testing.T) {
		s := newBackend(t, slow)
		fast := newBackend(t, answering(http.StatusOK, "fast"))
		h := newHarness(t, setup{backends: []string{s.URL, fast.URL},
			opts: Options{MaxRetries: 1, RequestTimeout: 200 * time.Millisecond}})
		res, body := h.do(t, request{method: http.MethodPost, body: strings.NewReader("x")})
		assertJSONError(t, res, body, http.StatusGatewayTimeout, "gateway timeout")
		assert.Zero(t, fast.hits.Load())
	})
}

func TestWhenEveryAttemptFails(t *testing.T) {
	t.Run("the last answer is returned", func(t *testing.T) {
		a := newBackend(t, answering(http.StatusServiceUnavailable, "a"))
		b := newBackend(t, answering(http.StatusBadGateway, "b"))
		c := newBackend(t, answering(http.StatusGatewayTimeout, "c"))
		h := newHarness(t, setup{backends: []string{a.URL, b.URL, c.URL}, opts: Options{MaxRetries: 5}})
		res, body := h.do(t, request{})
		assert.Equal(t, http.StatusGatewayTimeout, res.StatusCode)
		assert.Equal(t, "c", body)
		assert.Equal(t, "20", res.Header.Get("X-RateLimit-Limit"))
	})
	t.Run("the retry budget stops early", func(t *testing.T) {
		a := newBackend(t, answering(http.StatusServiceUnavailable, "a"))
		b := newBackend(t, answering(http.StatusServiceUnavailable, "b"))
		c := newBackend(t, answering(http.StatusOK, "c"))
		h := newHarness(t, setup{backends: []string{a.URL, b.URL, c.URL}, opts: Options{MaxRetries: 1}})
		res, body := h.do(t, request{})
		assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
		assert.Equal(t, "b", body)
		assert.Zero(t, c.hits.Load())
	})
	t.Run("an answer beats a later connection error", func(t *testing.T) {
		a := newBackend(t, answering(http.StatusServiceUnavailable, "a"))
		dead := deadURL(t)
		h := newHarness(t, setup{backends: []string{a.URL, dead}, opts: Options{MaxRetries: 1}})
		res, body := h.do(t, request{})
		assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
		assert.Equal(t, "a", body)
		assert.Equal(t, []string{strings.TrimPrefix(dead, "http://")}, h.failures.hosts())
	})
	t.Run("connection errors only give 502", func(t *testing.T) {
		dead1, dead2 := deadURL(t), deadURL(t)
		h := newHarness(t, setup{backends: []string{dead1, dead2}, opts: Options{MaxRetries: 5}})
		res, body := h.do(t, request{})
		assertJSONError(t, res, body, http.StatusBadGateway, "bad gateway")
		assert.ElementsMatch(t, []string{strings.TrimPrefix(dead1, "http://"), strings.TrimPrefix(dead2, "http://")},
			h.failures.hosts(), "each backend is tried once")
	})
	t.Run("one backend is never tried twice", func(t *testing.T) {
		a := newBackend(t, answering(http.StatusServiceUnavailable, "a"))
		logs := &logBuffer{}
		h := newHarness(t, setup{backends: []string{a.URL}, opts: Options{MaxRetries: 3, Logger: newLogger(logs)}})
		res, body := h.do(t, request{})
		assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
		assert.Equal(t, "a", body)
		assert.EqualValues(t, 1, a.hits.Load())
		assert.NotContains(t, logs.String(), "retrying request", "no retry is logged when none happens")
	})
	// Regression: a 503 with a body over what can be held was returned
	// as is instead of retried (SPEC 3.5: whatever its body size).
	t.Run("a failed answer too large to hold is retried", func(t *testing.T) {
		large := strings.Repeat("z", maxHeldAnswer*2)
		a := newBackend(t, answering(http.StatusServiceUnavailable, large))
		ok := newBackend(t, answering(http.StatusOK, "ok"))
		h := newHarness(t, setup{backends: []string{a.URL, ok.URL}, opts: Options{MaxRetries: 1}})
		res, body := h.do(t, request{})
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, "ok", body)
		assert.EqualValues(t, 1, ok.hits.Load())
	})
}

func TestBackendBasePath(t *testing.T) {
	got := make(chan string, 1)
	b := newBackend(t, func(_ http.ResponseWriter, r *http.Request) { got <- r.URL.RequestURI() })
	h := newHarness(t, setup{backends: []string{b.URL + "/base/?tenant=7"}})
	res, _ := h.do(t, request{path: "/x/y?q=1"})
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "/base/x/y?tenant=7&q=1", <-got)
}

func TestJoinURL(t *testing.T) {
	tests := []struct {
		target, in, want string
	}{
		{"http://b", "/x?q=1", "/x?q=1"},
		{"http://b/", "/x", "/x"},
		{"http://b/base", "/x", "/base/x"},
		{"http://b/base/", "/x", "/base/x"},
		{"http://b/base", "/", "/base/"},
		{"http://b/a%2Fb", "/c%2Fd", "/a%2Fb/c%2Fd"},
		{"http://b?t=1", "/x", "/x?t=1"},
		{"http://b?t=1", "/x?q=2", "/x?t=1&q=2"},
	}
	for _, tt := range tests {
		t.Run(tt.target+" "+tt.in, func(t *testing.T) {
			target, err := url.Parse(tt.target)
			require.NoError(t, err)
			u, err := url.Parse(tt.in)
			require.NoError(t, err)
			joinURL(u, target)
			assert.Equal(t, tt.want, u.RequestURI())
		})
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
