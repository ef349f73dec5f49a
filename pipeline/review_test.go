package pipeline

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
