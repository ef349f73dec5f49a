package actors

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tollgate/tollgate/config"
	"github.com/tollgate/tollgate/messages"
)

// fakeAnswer is how a fake backend answers a probe.
type fakeAnswer struct {
	status int           // 0 means 200
	err    error         // returned instead of a status
	delay  time.Duration // how long the probe takes (fake time in bubbles)
	hang   bool          // block until the probe's ctx ends
	gate   chan struct{} // block until closed, then answer
}

// fakeProbes answers probes by the target's host and records when each
// host was probed.
type fakeProbes struct {
	mu      sync.Mutex
	answers map[string]fakeAnswer
	calls   map[string][]time.Time
}

var _ ProbeFunc = (*fakeProbes)(nil).probe

func newFakeProbes() *fakeProbes {
	return &fakeProbes{answers: map[string]fakeAnswer{}, calls: map[string][]time.Time{}}
}

func (f *fakeProbes) set(host string, a fakeAnswer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[host] = a
}

func (f *fakeProbes) callTimes(host string) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls[host]...)
}

func (f *fakeProbes) probe(ctx context.Context, target string) (int, error) {
	u, err := url.Parse(target)
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	a := f.answers[u.Host]
	f.calls[u.Host] = append(f.calls[u.Host], time.Now())
	f.mu.Unlock()
	if a.hang {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if a.gate != nil {
		select {
		case <-a.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if a.delay > 0 {
		time.Sleep(a.delay)
	}
	if a.err != nil {
		return 0, a.err
	}
	if a.status == 0 {
		return 200, nil
	}
	return a.status, nil
}

func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startRegistry runs a registry and its workers in an errgroup; the
// returned stop cancels them and waits, and also runs at cleanup.
func startRegistry(t *testing.T, cfg RegistryConfig, probe ProbeFunc, logger *slog.Logger) (*Registry, func() error) {
	t.Helper()
	r, err := NewRegistry(cfg, probe, logger)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.Run(gctx) })
	for range max(cfg.Workers, 1) {
		g.Go(func() error { return r.RunWorker(gctx) })
	}
	stop := sync.OnceValue(func() error {
		cancel()
		return g.Wait()
	})
	t.Cleanup(func() { assert.NoError(t, stop()) })
	return r, stop
}

func regConfig(interval time.Duration, workers int, urls ...string) RegistryConfig {
	return RegistryConfig{URLs: urls, Interval: interval, Workers: workers}
}

func healthyURLs(r *Registry) []string {
	var out []string
	for _, b := range r.Healthy() {
		out = append(out, b.URL.String())
	}
	return out
}

func statusOf(t *testing.T, r *Registry, rawURL string) messages.BackendStatus {
	t.Helper()
	sts, err := r.Statuses(t.Context())
	require.NoError(t, err)
	for _, st := range sts {
		if st.URL == rawURL {
			return st
		}
	}
	require.Failf(t, "no status", "backend %s not in statuses", rawURL)
	return messages.BackendStatus{}
}

func TestNewRegistryValidates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     RegistryConfig
		wantErr string
	}{
		{"no urls", RegistryConfig{Interval: time.Second}, "no backend urls"},
		{"zero interval", regConfig(0, 1, "http://a.test"), "interval"},
		{"relative url", regConfig(time.Second, 1, "a.test:80"), `[0] "a.test:80"`},
		{"bad scheme", regConfig(time.Second, 1, "http://a.test", "ftp://b.test"), `[1] "ftp://b.test"`},
		{"duplicate", regConfig(time.Second, 1, "http://a.test", "http://a.test"), "listed twice"},
		{"path without slash", RegistryConfig{URLs: []string{"http://a.test"}, Interval: time.Second, Path: "health"}, "must start with /"},
		{"negative timeout", RegistryConfig{URLs: []string{"http://a.test"}, Interval: time.Second, Timeout: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewRegistry(tt.cfg, newFakeProbes().probe, nil)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestRegistryProbesAllAtStartThenEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		cfg := regConfig(10*time.Second, 2, "http://a.test", "http://b.test", "http://c.test")
		r, _ := startRegistry(t, cfg, fake.probe, testLogger(t))

		snap := r.Healthy()
		require.Len(t, snap, 3, "backends start healthy before any probe")
		assert.Equal(t, []string{"http://a.test", "http://b.test", "http://c.test"}, healthyURLs(r))
		ids := map[int]bool{}
		for _, b := range snap {
			ids[b.ID] = true
		}
		assert.Len(t, ids, 3, "IDs are unique")

		start := time.Now()
		synctest.Wait()
		for _, h := range []string{"a.test", "b.test", "c.test"} {
			assert.Equal(t, []time.Time{start}, fake.callTimes(h), h)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		for _, h := range []string{"a.test", "b.test", "c.test"} {
			assert.Equal(t, []time.Time{start, start.Add(10 * time.Second)}, fake.callTimes(h), h)
		}
		assert.Equal(t, snap, r.Healthy(), "snapshot unchanged while nothing changed")
	})
}

func TestRegistryStatuses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		fake.set("ok.test", fakeAnswer{status: 204, delay: 30 * time.Millisecond})
		fake.set("bad.test", fakeAnswer{status: 500, delay: 50 * time.Millisecond})
		fake.set("down.test", fakeAnswer{err: errors.New("connection refused"), delay: 10 * time.Millisecond})
		cfg := regConfig(time.Minute, 3, "http://ok.test", "http://bad.test", "http://down.test")
		start := time.Now()
		r, _ := startRegistry(t, cfg, fake.probe, testLogger(t))

		synctest.Wait() // every probe started, none finished: fake time stands still
		before, err := r.Statuses(t.Context())
		require.NoError(t, err)
		require.Len(t, before, 3)
		for _, st := range before {
			assert.True(t, st.Healthy, st.URL)
			assert.True(t, st.LastCheck.IsZero(), "no probe has finished yet: %s", st.URL)
		}

		time.Sleep(time.Second)
		synctest.Wait()
		got, err := r.Statuses(t.Context())
		require.NoError(t, err)
		want := []messages.BackendStatus{
			{URL: "http://ok.test", Healthy: true, LastCheck: start.Add(30 * time.Millisecond),
				LastStatus: 204, LastLatency: 30 * time.Millisecond, ConsecutiveSuccesses: 1, Since: start, Weight: 1},
			{URL: "http://bad.test", Healthy: false, LastCheck: start.Add(50 * time.Millisecond),
				LastError: "unhealthy status 500", LastStatus: 500, LastLatency: 50 * time.Millisecond,
				ConsecutiveFailures: 1, Since: start.Add(50 * time.Millisecond), Weight: 1},
			{URL: "http://down.test", Healthy: false, LastCheck: start.Add(10 * time.Millisecond),
				LastError: "connection refused", LastLatency: 10 * time.Millisecond,
				ConsecutiveFailures: 1, Since: start.Add(10 * time.Millisecond), Weight: 1},
		}
		assert.Equal(t, want, got)
		assert.Equal(t, []string{"http://ok.test"}, healthyURLs(r))
	})
}

func TestRegistryReconfigure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		gate := make(chan struct{})
		fake.set("c.test", fakeAnswer{gate: gate})
		cfg := regConfig(10*time.Second, 2, "http://a.test", "http://b.test")
		r, _ := startRegistry(t, cfg, fake.probe, testLogger(t))
		synctest.Wait()
		start := time.Now()
		before := r.Healthy()
		bStatus := statusOf(t, r, "http://b.test")

		next := regConfig(3*time.Second, 2, "http://b.test", "http://c.test")
		next.HealthyThreshold = 3
		require.NoError(t, r.Reconfigure(t.Context(), next))
		assert.Equal(t, []messages.Backend{before[1]}, r.Healthy(),
			"a removed at once, b kept with its ID, c not used before a probe passes")
		assert.Equal(t, bStatus, statusOf(t, r, "http://b.test"), "b keeps its state")
		assert.False(t, statusOf(t, r, "http://c.test").Healthy)

		close(gate)
		synctest.Wait()
		got := r.Healthy()
		require.Equal(t, []string{"http://b.test", "http://c.test"}, healthyURLs(r),
			"a new backend's first passing probe lets it in despite healthy_threshold 3")
		assert.NotContains(t, []int{before[0].ID, before[1].ID}, got[1].ID, "c has a new ID")

		time.Sleep(3 * time.Second)
		synctest.Wait()
		assert.Equal(t, []time.Time{start, start.Add(3 * time.Second)}, fake.callTimes("b.test"),
			"the new interval applies")
		assert.Len(t, fake.callTimes("a.test"), 1, "a removed backend is not probed")

		// Re-adding a removed URL makes a new backend with a new ID.
		require.NoError(t, r.Reconfigure(t.Context(), cfg))
		synctest.Wait()
		again := r.Healthy()
		require.Equal(t, []string{"http://a.test", "http://b.test"}, healthyURLs(r))
		assert.NotEqual(t, before[0].ID, again[0].ID)
		assert.Equal(t, before[1], again[1])
	})
}

func TestRegistryReconfigureRejectsInvalidConfig(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		r, _ := startRegistry(t, regConfig(10*time.Second, 1, "http://a.test"), fake.probe, testLogger(t))
		synctest.Wait()
		before := r.Healthy()
		err := r.Reconfigure(t.Context(), regConfig(10*time.Second, 1, "http://a.test", "nope"))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `[1] "nope"`)
		assert.Equal(t, before, r.Healthy())

		// A worker count change is kept for restart, not an error.
		require.NoError(t, r.Reconfigure(t.Context(), regConfig(10*time.Second, 8, "http://a.test")))
		assert.Equal(t, before, r.Healthy())
	})
}

func TestRegistryShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		fake.set("hung.test", fakeAnswer{hang: true})
		cfg := regConfig(time.Second, 2, "http://hung.test", "http://b.test")
		cfg.Timeout = time.Hour
		r, stop := startRegistry(t, cfg, fake.probe, testLogger(t))
		synctest.Wait() // one worker is stuck in the hung probe
		b := r.Healthy()[1]

		require.NoError(t, stop(), "Run and workers return nil on cancellation")
		_, err := r.Statuses(t.Context())
		assert.ErrorIs(t, err, messages.ErrStopped)
		assert.ErrorIs(t, r.Reconfigure(t.Context(), cfg), messages.ErrStopped)
		assert.NoError(t, r.RunWorker(t.Context()), "a late worker returns at once")
		r.ReportFailure(t.Context(), b, errors.New("late")) // must not block
		assert.Contains(t, r.Healthy(), b, "the last snapshot stays readable")
		assert.Error(t, r.Run(t.Context()), "Run runs once")
	})
}

func TestRegistryCallersGiveUpWithTheirContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, err := NewRegistry(regConfig(time.Second, 1, "http://a.test"), newFakeProbes().probe, nil)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err = r.Statuses(ctx) // Run never started
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.ErrorIs(t, r.Reconfigure(ctx, regConfig(time.Second, 1, "http://b.test")), context.DeadlineExceeded)
	})
}

// TestRegistryConcurrentUse hammers the snapshot and the passive check from
// many goroutines while probes flip backends back, for the race detector.
func TestRegistryConcurrentUse(t *testing.T) {
	fake := newFakeProbes()
	urls := []string{"http://a.test", "http://b.test", "http://c.test", "http://d.test"}
	cfg := regConfig(time.Millisecond, 2, urls...)
	r, stop := startRegistry(t, cfg, fake.probe, slog.New(slog.DiscardHandler))
	ids := map[int]bool{}
	for _, b := range r.Healthy() {
		ids[b.ID] = true
	}

	var g errgroup.Group
	for w := range 8 {
		g.Go(func() error {
			for i := range 2000 {
				snap := r.Healthy()
				seen := map[int]bool{}
				for _, b := range snap {
					if !ids[b.ID] || seen[b.ID] {
						return errors.New("snapshot holds an unknown or repeated backend")
					}
					seen[b.ID] = true
				}
				if len(snap) > 0 && i%3 == w%3 {
					r.ReportFailure(context.Background(), snap[i%len(snap)], errors.New("refused"))
				}
				if i%200 == 0 {
					if _, err := r.Statuses(context.Background()); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	require.NoError(t, stop())
}

func TestRegistryConfigFromAndDefaults(t *testing.T) {
	lb := config.LoadBalancer{
		BackendURLs:            []string{"http://a.test"},
		HealthCheckInterval:    10 * time.Second,
		HealthCheckWorkerCount: 3,
		HealthCheckPath:        "/ready",
		HealthCheckTimeout:     2 * time.Second,
		HealthyThreshold:       2,
		UnhealthyThreshold:     4,
		MaxRetries:             9,
	}
	want := RegistryConfig{
		URLs: []string{"http://a.test"}, Interval: 10 * time.Second, Timeout: 2 * time.Second,
		Path: "/ready", HealthyThreshold: 2, UnhealthyThreshold: 4, Workers: 3,
	}
	assert.Equal(t, want, RegistryConfigFrom(lb))

	got, _, err := normalizeRegistryConfig(RegistryConfig{URLs: []string{"http://a.test"}, Interval: time.Second})
	require.NoError(t, err)
	assert.Equal(t, RegistryConfig{
		URLs: []string{"http://a.test"}, Interval: time.Second, Timeout: time.Second,
		Path: "/health", HealthyThreshold: 1, UnhealthyThreshold: 1, Workers: 1,
		Weights: []int{1},
	}, got)

	r, err := NewRegistry(RegistryConfigFrom(lb), newFakeProbes().probe, nil)
	require.NoError(t, err)
	assert.Equal(t, 3, r.Workers())
}
