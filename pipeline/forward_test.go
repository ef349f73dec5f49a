package pipeline

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These pin the parts of forward that copy httputil.ReverseProxy's rules
// rather than calling them; TestForwardedHeaders and TestProtocolUpgrade
// cover the rest.

func TestTrailersPassBothWays(t *testing.T) {
	gotTE := make(chan string, 1)
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		gotTE <- r.Header.Get("Te")
		w.Header().Set("Trailer", "X-Sum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "unannounced")
	})
	h := newHarness(t, setup{backends: []string{b.URL}})
	res, body := h.do(t, request{header: http.Header{"Te": {"trailers"}}})
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "body", body)
	assert.Equal(t, "trailers", <-gotTE, "the backend learns the client takes trailers")
	assert.Equal(t, "42", res.Trailer.Get("X-Sum"))
	assert.Equal(t, "unannounced", res.Trailer.Get("X-Late"))
}

func TestAmbiguousQueryIsCleaned(t *testing.T) {
	got := make(chan string, 4)
	b := newBackend(t, func(_ http.ResponseWriter, r *http.Request) { got <- r.URL.RawQuery })
	h := newHarness(t, setup{backends: []string{b.URL}})
	for _, tc := range []struct{ sent, want string }{
		{"a=1&b=2", "a=1&b=2"},
		{"x=1&a=1;b=2", "x=1"}, // semicolons: parsers disagree, so the pair goes
		{"q=%zz&k=v", "k=v"},   // a malformed escape likewise
		{"s=%41", "s=%41"},     // a good escape is left as sent
	} {
		res, _ := h.do(t, request{path: "/p?" + tc.sent})
		require.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, tc.want, <-got, tc.sent)
	}
}

func TestNoUserAgentIsNotReplacedByGos(t *testing.T) {
	got := make(chan []string, 1)
	b := newBackend(t, func(_ http.ResponseWriter, r *http.Request) { got <- r.Header.Values("User-Agent") })
	h := newHarness(t, setup{backends: []string{b.URL}})
	res, _ := h.do(t, request{header: http.Header{"User-Agent": {""}}})
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Empty(t, <-got)
}

func TestUnaskedProtocolSwitchIsABadGateway(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusSwitchingProtocols)
	})
	h := newHarness(t, setup{backends: []string{b.URL}})
	res, body := h.do(t, request{})
	assertJSONError(t, res, body, http.StatusBadGateway, "bad gateway")
}

func TestBackendHeaderValuesReachTheClientWhole(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Set-Cookie"] = []string{"a=1", "b=2"}
		w.Header().Set("Content-Type", "text/plain")
	})
	h := newHarness(t, setup{backends: []string{b.URL}})
	res, _ := h.do(t, request{})
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, []string{"a=1", "b=2"}, res.Header.Values("Set-Cookie"))
	assert.Equal(t, "text/plain", res.Header.Get("Content-Type"))
	assert.Len(t, res.Header.Values("X-Request-Id"), 1, "ours, once")
}

// The transport may call the 1xx hook or read the request body after the
// attempt that owns them has ended; neither may reach the client then.
func TestLateTransportCallsAreInert(t *testing.T) {
	w := httptest.NewRecorder()
	w.Header().Set("X-Request-Id", "mine")
	rl := &relay1xx{x: &exchange{w: w}}
	rl.end()
	require.NoError(t, rl.got1xx(http.StatusEarlyHints, textproto.MIMEHeader{"Link": {"</a.css>"}}))
	assert.Equal(t, "mine", w.Header().Get("X-Request-Id"), "headers untouched")
	assert.Empty(t, w.Header().Get("Link"))
	assert.False(t, w.Flushed)

	b := &guardedBody{rc: io.NopCloser(strings.NewReader("payload"))}
	buf := make([]byte, 3)
	n, err := b.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "pay", string(buf[:n]))
	require.NoError(t, b.Close())
	_, err = b.Read(buf)
	assert.ErrorIs(t, err, errBodyAfterHandler)
}

// An event stream may wait long for its first event: the client must get
// the answer's headers as soon as the backend sends them.
func TestStreamedAnswerHeadersArriveBeforeAnyBody(t *testing.T) {
	for _, ct := range []string{"text/event-stream", "application/octet-stream"} {
		t.Run(ct, func(t *testing.T) {
			release := make(chan struct{})
			b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", ct)
				w.WriteHeader(http.StatusOK)
				http.NewResponseController(w).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
				}
				_, _ = io.WriteString(w, "data: late\n\n")
			})
			h := newHarness(t, setup{backends: []string{b.URL}})
			got := make(chan *http.Response, 1)
			go func() {
				res := h.send(t, request{})
				got <- res
			}()
			select {
			case res := <-got:
				assert.Equal(t, http.StatusOK, res.StatusCode)
				assert.Equal(t, ct, res.Header.Get("Content-Type"))
				close(release)
				body, err := io.ReadAll(res.Body)
				require.NoError(t, err)
				assert.Equal(t, "data: late\n\n", string(body))
				require.NoError(t, res.Body.Close())
			case <-time.After(10 * time.Second):
				close(release)
				t.Fatal("no headers while the backend held back the body")
			}
		})
	}
}

// A 1xx clears the writer's headers; Tollgate's come back for the final
// answer.
func TestHeadersSurviveSeveralEarlyHints(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		for i := range 2 {
			w.Header().Set("Link", fmt.Sprintf("</s%d.css>; rel=preload", i))
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "ok")
	})
	h := newHarness(t, setup{backends: []string{b.URL}})
	res, body := h.do(t, request{})
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "ok", body)
	assert.Len(t, res.Header.Values("X-Request-Id"), 1)
	assert.NotEmpty(t, res.Header.Get("X-Ratelimit-Limit"))
	assert.Empty(t, res.Header.Get("Link"), "hints stay on the 1xx")
}
