package main

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHostileRetryBufferZeroHoldsNone: load_balancer.max_retry_buffer_bytes
// 0 holds no body for retries (README), although the pipeline reads 0 as
// its default: a PUT whose first backend answers 503 goes to the client as
// is, and the other backend never sees it.
func TestHostileRetryBufferZeroHoldsNone(t *testing.T) {
	busy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	a, b := newLiveBackendWith(t, busy), newLiveBackendWith(t, busy)
	cfg := baseConfig(t, a.url, b.url)
	setLB(cfg, map[string]any{"max_retries": 1, "max_retry_buffer_bytes": 0})
	in := start(t, cfg)
	key := createKey(t, in.addr, "", "putter")

	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, "http://"+in.addr+"/x", strings.NewReader("payload"))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := newHTTPClient(t).Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.EqualValues(t, 1, a.hits.Load()+b.hits.Load(), "not retried: no body is held")
}
