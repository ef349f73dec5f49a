package pipeline

import (
	"io"
	"net/http"
	"testing"

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
