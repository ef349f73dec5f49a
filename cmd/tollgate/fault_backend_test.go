package main

import (
	"net/http"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFaultBackendFlappingUnderLoad kills and revives two of three
// backends every 250 ms under load. One backend stays up throughout, so
// retries must hide every failure from clients; afterwards no goroutine
// or connection may be left over.
func TestFaultBackendFlappingUnderLoad(t *testing.T) {
	stable, flap1, flap2 := newLiveBackend(t), newLiveBackend(t), newLiveBackend(t)
	cfg := baseConfig(t, stable.url, flap1.url, flap2.url)
	// Frequent probes find a revived backend fast; a generous timeout and
	// two failures to mark one down keep a stall of a busy machine from
	// taking the stable backend out, or timing out an attempt on it. A
	// refused connection still marks a flapper down at once (passive).
	setLB(cfg, map[string]any{"health_check_interval": 0.1, "health_check_timeout": 2,
		"unhealthy_threshold": 2, "request_timeout": 5})
	in := start(t, cfg)
	faultLogOnFailure(t, in)
	hc := newHTTPClient(t)
	keys := []string{in.createClient(t, hc, "flap", hugeRate, hugeCapacity).APIKey}
	load := faultLoadOptions{workers: 4, every: 3 * time.Millisecond, keys: keys}

	// Warm up with every backend up, so that connection pools (ours,
	// Tollgate's to the backends, the probes') are as full before as after.
	warm := startFaultLoad(t, in, hc, load)
	warm.waitMore(t, 300, "warm-up load")
	warm.stop()
	require.Zero(t, tallyFaults(warm.all(), nil).failed)
	hc.CloseIdleConnections()
	goroutinesBefore, fdsBefore := runtime.NumGoroutine(), faultOpenFDs()

	flapHitsBefore := flap1.hits.Load() + flap2.hits.Load()
	ld := startFaultLoad(t, in, hc, load)
	const cycles = 6
	began := time.Now()
	faultFlap(cycles, flap1, flap2)
	flapped := time.Since(began)
	ld.stop()

	got := tallyFaults(ld.all(), nil)
	t.Logf("backend flapping: %d kill/up cycles in %s; %s", 2*cycles, flapped.Round(time.Millisecond), got)
	t.Logf("backend flapping: hits stable=%d flap1=%d flap2=%d", stable.hits.Load(), flap1.hits.Load(), flap2.hits.Load())
	retried := 0
	for _, l := range in.logs.lines("request") {
		if n, _ := l["attempts"].(float64); n > 1 {
			retried++
		}
	}
	t.Logf("backend flapping: %d requests answered after a retry", retried)
	assert.Zero(t, got.failed+got.serverErrors+got.otherStatus, "no client sees a failure: %s", got.firstFailure)
	assert.Positive(t, retried, "the flaps failed attempts that retries hid")
	assert.Greater(t, flap1.hits.Load()+flap2.hits.Load(), flapHitsBefore, "the flapping backends served between flaps")

	eventually(t, func() bool {
		bs := in.backendsByURL(t, hc)
		return bs[flap1.url].Healthy && bs[flap2.url].Healthy
	}, "the flapping backends are healthy again")
	goroutinesAfter, fdsAfter := assertFaultNoGrowth(t, hc, goroutinesBefore, fdsBefore)
	t.Logf("backend flapping: goroutines %d → %d, open fds %d → %d", goroutinesBefore, goroutinesAfter, fdsBefore, fdsAfter)
	require.NoError(t, in.stop())
}

// faultFlap kills and revives each backend cycles times, each down for 250 ms
// and up for 250 ms, out of phase with one another. All are up when it
// returns.
func faultFlap(cycles int, bs ...*liveBackend) {
	const period = 250 * time.Millisecond
	tick := time.NewTicker(period / time.Duration(len(bs))) // the fault's rhythm, not a wait for a condition
	defer tick.Stop()
	for i := range 2 * cycles * len(bs) {
		<-tick.C
		b := bs[i%len(bs)]
		if i/len(bs)%2 == 0 {
			b.kill()
		} else {
			b.up()
		}
	}
}

// assertFaultNoGrowth waits for the goroutines and open files of this
// process to come back to what they were, within a small slack for pools
// that may hold a connection more than before; a leak per request or per
// flap is far above it. Idle connections close, and their goroutines end,
// asynchronously.
func assertFaultNoGrowth(t *testing.T, hc *http.Client, goroutinesBefore, fdsBefore int) (goroutines, fds int) {
	t.Helper()
	const goroutineSlack, fdSlack = 10, 6
	eventually(t, func() bool {
		hc.CloseIdleConnections()
		goroutines, fds = runtime.NumGoroutine(), faultOpenFDs()
		return goroutines <= goroutinesBefore+goroutineSlack && fds <= fdsBefore+fdSlack
	}, "no goroutine or fd growth: goroutines %d → %s, fds %d → %s",
		goroutinesBefore, faultLazy(func() string { return strconv.Itoa(goroutines) }),
		fdsBefore, faultLazy(func() string { return strconv.Itoa(fds) }))
	return goroutines, fds
}
