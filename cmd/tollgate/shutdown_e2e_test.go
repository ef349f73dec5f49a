package main

import (
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist"
)

// slowBackend holds every forwarded request until release is closed (or
// a safety bound passes), counting those it holds.
func slowBackend(t *testing.T) (b *liveBackend, holding *atomic.Int64, release chan struct{}) {
	t.Helper()
	holding, release = new(atomic.Int64), make(chan struct{})
	b = newLiveBackendWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		holding.Add(1)
		select {
		case <-release:
		case <-time.After(waitFor): // never hang the test
		}
		_, _ = w.Write([]byte("slow ok"))
	}))
	return b, holding, release
}

func TestShutdownFinishesInFlightRequestsAndFlushesState(t *testing.T) {
	backend, holding, release := slowBackend(t)
	cfg := baseConfig(t, backend.url)
	// Only the final flush can save the bucket.
	setRL(cfg, map[string]any{"save_state_interval": 300})
	stateFile := cfg["state_file"].(string)
	in := start(t, cfg)
	hc := newHTTPClient(t)
	const capacity, inFlight = 100, 5
	c := in.createClient(t, hc, "draining", 0.001, capacity)

	results := make(chan reply, inFlight)
	errs := make(chan error, inFlight)
	for i := range inFlight {
		go func() { // the test receives its result below
			r, err := in.forward(hc, c.APIKey, "/slow/"+strconv.Itoa(i), nil)
			results <- r
			errs <- err
		}()
	}
	eventually(t, func() bool { return holding.Load() == inFlight }, "requests in flight at the backend")

	stopped := make(chan error, 1)
	go func() { stopped <- in.stop() }() // received below
	eventually(t, func() bool {
		conn, err := net.Dial("tcp", in.addr)
		if err == nil {
			conn.Close()
		}
		return err != nil
	}, "a stopping Tollgate accepts no new connections")
	select {
	case err := <-stopped:
		t.Fatalf("run returned with requests in flight: %v", err)
	default:
	}

	close(release)
	for range inFlight {
		r := <-results
		require.NoError(t, <-errs)
		assert.Equal(t, http.StatusOK, r.status, r.body)
		assert.Equal(t, "slow ok", r.body)
	}
	require.NoError(t, <-stopped, "run returns nil after a graceful stop")
	assert.Len(t, in.logs.lines("final flush done"), 1)

	store, err := persist.OpenBolt(stateFile, slog.New(slog.DiscardHandler))
	require.NoError(t, err, "the store is closed once run returns")
	defer store.Close()
	saved, err := store.GetClient(t.Context(), c.ClientID)
	require.NoError(t, err)
	assert.InDelta(t, capacity-inFlight, saved.Tokens, 0.05, "the spent tokens were flushed at stop")
}

func TestRestartResumesBucketsFromTheStateFile(t *testing.T) {
	backend := newLiveBackend(t)
	cfg := baseConfig(t, backend.url)
	in := start(t, cfg)
	hc := newHTTPClient(t)
	const capacity, spent = 20, 15
	c := in.createClient(t, hc, "resume", 0.01, capacity)
	for range spent {
		r := in.mustForward(t, hc, c.APIKey, "/spend", nil)
		require.Equal(t, http.StatusOK, r.status, r.body)
	}
	require.NoError(t, in.stop())

	again := start(t, cfg) // same state_file
	got := again.getClient(t, hc, c.ClientID)
	assert.InDelta(t, capacity-spent, got.Tokens, 0.1, "the bucket resumes where it was, not full")
	r := again.mustForward(t, hc, c.APIKey, "/after-restart", nil)
	require.Equal(t, http.StatusOK, r.status, "the key works after a restart: %s", r.body)
	assert.Equal(t, strconv.Itoa(capacity-spent-1), r.header.Get("X-RateLimit-Remaining"))
	assert.Equal(t, int64(spent+1), backend.hits.Load())
}
