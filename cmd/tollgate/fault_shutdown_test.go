package main

import (
	"context"
	"math"
	"net/http"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// TestFaultSIGTERMUnderLoad sends this process a real SIGTERM while
// Tollgate, wired as main wires it, serves steady load through a slow
// backend: every request it accepted is answered, run returns nil (exit
// 0) after a final flush, and a second instance on the same database
// resumes the buckets where the first left them.
func TestFaultSIGTERMUnderLoad(t *testing.T) {
	backend := newLiveBackendWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		work := time.NewTimer(20 * time.Millisecond) // the backend's work, so requests are in flight
		defer work.Stop()
		select {
		case <-work.C:
		case <-r.Context().Done():
		}
		_, _ = w.Write([]byte("done"))
	}))
	cfg := baseConfig(t, backend.url)
	faultPatient(cfg)
	cfg["database_url"] = pgtest.New(t)
	// Only the final flush saves: nothing else can explain the rows.
	setRL(cfg, map[string]any{"save_state_interval": 300})
	in, exited := faultStartSignalled(t, cfg)
	faultLogOnFailure(t, in)
	hc := newHTTPClient(t)
	clients := []faultClient{{"term-0", 100_000}, {"term-1", 100_000}}
	keys := make([]string, len(clients))
	for i, c := range clients {
		keys[i] = in.createClient(t, hc, c.id, faultSlowRate, c.capacity).APIKey
	}
	ld := startFaultLoad(t, in, hc, faultLoadOptions{workers: 6, every: 2 * time.Millisecond, keys: keys})
	ld.waitMore(t, 200, "load running")

	signalled := time.Now()
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGTERM))
	select {
	case <-exited:
	case <-time.After(waitFor):
		t.Fatal("run did not return after SIGTERM")
	}
	stoppedIn := time.Since(signalled)
	ld.stop()
	err := in.stop()
	require.NoError(t, err, "run returns nil after SIGTERM")
	assert.Equal(t, 0, exitCode(err))
	assert.Len(t, in.logs.lines("final flush done"), 1)
	results := ld.all()
	t.Logf("SIGTERM: run returned %s after the signal", stoppedIn.Round(time.Millisecond))
	assertFaultNothingLostAtStop(t, results, signalled)

	dsn := cfg["database_url"].(string)
	want := faultExpectedTokens(clients, results)
	rows := faultStoredStates(t, dsn)
	for id, tokens := range want {
		assert.InDelta(t, tokens, rows[id].tokens, 0.1, "%s: the final flush saved every admission", id)
	}
	again := start(t, cfg)
	for i, c := range clients {
		got := again.getClient(t, hc, c.id)
		t.Logf("SIGTERM: %s resumed with %.3f tokens of %d (admitted %d before the stop)",
			c.id, got.Tokens, c.capacity, c.capacity-int64(want[c.id]))
		assert.InDelta(t, want[c.id], got.Tokens, 0.1, "%s resumes where the first instance stopped, not full", c.id)
		r := again.mustForward(t, hc, keys[i], "/after", nil)
		require.Equal(t, http.StatusOK, r.status, r.body)
		assert.Equal(t, strconv.FormatInt(int64(math.Floor(got.Tokens))-1, 10), r.header.Get("X-RateLimit-Remaining"))
	}
	require.NoError(t, again.stop())
}

// assertFaultNothingLostAtStop checks a load's results across a stop
// signalled at signalled: every request was answered 200, or refused a
// connection after the stop began (it was never accepted), and some were
// in flight when the signal came.
func assertFaultNothingLostAtStop(t *testing.T, results []faultResult, signalled time.Time) {
	t.Helper()
	refusedAfterStop := func(r faultResult) bool { return faultRefused(r.err) && r.ended.After(signalled) }
	answered := tallyFaults(results, func(r faultResult) bool { return r.err == nil })
	across := tallyFaults(results, func(r faultResult) bool {
		return r.err == nil && r.begun.Before(signalled) && r.ended.After(signalled)
	})
	refused := tallyFaults(results, func(r faultResult) bool { return r.err != nil && refusedAfterStop(r) })
	lost := tallyFaults(results, func(r faultResult) bool { return r.err != nil && !refusedAfterStop(r) })
	t.Logf("SIGTERM: sent=%d answered=%d (in flight at the signal: %d) refused after the signal=%d lost=%d",
		len(results), answered.sent, across.sent, refused.sent, lost.sent)
	assert.Zero(t, lost.sent, "no request lost: %s", lost.firstFailure)
	assert.Equal(t, answered.sent, answered.ok, "every answer is a 200: %s", answered)
	assert.Positive(t, across.ok, "requests in flight at the signal were answered")
}

// faultStartSignalled runs Tollgate as main does, its context ending at the
// first SIGTERM this process gets, and waits until it listens. exited is
// closed when run has returned; stop (which also cancels, for a test that
// fails before signalling) returns run's error.
func faultStartSignalled(t *testing.T, cfg map[string]any) (in *instance, exited <-chan struct{}) {
	t.Helper()
	dsn, _ := cfg["database_url"].(string)
	t.Setenv("DATABASE_URL", dsn)
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	logs := &logBuffer{}
	done := make(chan struct{})
	var runErr error
	go func() { // stop waits for it
		defer close(done)
		runErr = run(ctx, []string{"-config", writeConfig(t, cfg), "-addr", "127.0.0.1:0"}, logs)
	}()
	var once sync.Once
	in = &instance{logs: logs, stop: func() error {
		once.Do(func() { cancel(); <-done })
		return runErr
	}}
	t.Cleanup(func() { _ = in.stop() })
	eventually(t, func() bool {
		select {
		case <-done:
			require.FailNow(t, "tollgate stopped at start", "%v\n%s", runErr, logs)
		default:
		}
		for _, l := range logs.lines("listening") {
			if l["server"] == "main" {
				in.addr, _ = l["addr"].(string)
			}
		}
		return in.addr != ""
	}, "tollgate listening")
	return in, done
}
