package actors

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// probeTestServer answers the paths TestHTTPProbe probes.
func probeTestServer(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "tollgate-health-check", r.UserAgent())
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	mux.HandleFunc("GET /moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/fail", http.StatusFound)
	})
	mux.HandleFunc("GET /fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("GET /hang", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /endless", func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 32<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestHTTPProbe(t *testing.T) {
	srv := probeTestServer(t)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	tests := []struct {
		name       string
		target     string
		wantStatus int
		wantErr    error // nil: no error; else errors.Is or any error when errAny
		errAny     bool
	}{
		{"ok", srv.URL + "/ok", 200, nil, false},
		{"not found is an answer", srv.URL + "/missing", 404, nil, false},
		{"redirect not followed", srv.URL + "/moved", 302, nil, false},
		{"server error is an answer", srv.URL + "/fail", 503, nil, false},
		{"endless body is cut", srv.URL + "/endless", 200, nil, false},
		{"hang times out", srv.URL + "/hang", 0, context.DeadlineExceeded, false},
		{"refused", closed.URL + "/ok", 0, nil, true},
	}
	probe := HTTPProbe(nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			defer cancel()
			status, err := probe(ctx, tt.target)
			switch {
			case tt.errAny:
				assert.Error(t, err)
			case tt.wantErr != nil:
				assert.ErrorIs(t, err, tt.wantErr)
			default:
				assert.NoError(t, err)
			}
			assert.Equal(t, tt.wantStatus, status)
		})
	}
}

// TestRegistryWithRealBackends runs the registry and workers against real
// servers on 127.0.0.1: one healthy, one answering 500, one closed.
func TestRegistryWithRealBackends(t *testing.T) {
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(healthy.Close)
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(failing.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	cfg := RegistryConfig{
		URLs:     []string{healthy.URL, failing.URL, closed.URL},
		Interval: time.Hour, // only the probes at start and those asked for
		Timeout:  5 * time.Second,
		Path:     "/healthz",
		Workers:  2,
	}
	r, _ := startRegistry(t, cfg, HTTPProbe(nil), testLogger(t))

	allChecked := func() bool {
		sts, err := r.Statuses(t.Context())
		return err == nil && !slices.ContainsFunc(sts, func(s messages.BackendStatus) bool { return s.LastCheck.IsZero() })
	}
	require.Eventually(t, allChecked, 10*time.Second, 5*time.Millisecond)
	require.Len(t, r.Healthy(), 1)
	assert.Equal(t, healthy.URL, r.Healthy()[0].URL.String())

	sts, err := r.Statuses(t.Context())
	require.NoError(t, err)
	assert.Equal(t, 200, sts[0].LastStatus)
	assert.Equal(t, 500, sts[1].LastStatus)
	assert.Equal(t, "unhealthy status 500", sts[1].LastError)
	assert.NotEmpty(t, sts[2].LastError)
	assert.False(t, sts[2].Healthy)

	// A passive failure ejects the healthy one; its next probe passes and
	// brings it back.
	sinceBefore := sts[0].Since
	r.ReportFailure(t.Context(), r.Healthy()[0], errors.New("connection reset by peer"))
	require.Eventually(t, func() bool {
		sts, err := r.Statuses(t.Context())
		return err == nil && sts[0].Healthy && sts[0].Since.After(sinceBefore)
	}, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, []string{healthy.URL}, healthyURLs(r))
}

func TestProbeTarget(t *testing.T) {
	tests := []struct {
		name, base, path, want string
	}{
		{"bare host", "http://a.test:81", "/health", "http://a.test:81/health"},
		{"trailing slash", "http://a.test/", "/health", "http://a.test/health"},
		{"path prefix", "https://a.test/api/", "/health", "https://a.test/api/health"},
		{"query in path", "http://a.test", "/status?full=1", "http://a.test/status?full=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.base)
			require.NoError(t, err)
			assert.Equal(t, tt.want, probeTarget(u, tt.path))
		})
	}
}

func TestRegistryThresholds(t *testing.T) {
	tests := []struct {
		name                string
		healthyN, unhealthy int
		passes              []bool // probe outcome at each interval, from the first
		want                []bool // healthy after each probe
	}{
		{"defaults flip on one result", 1, 1,
			[]bool{false, true, false}, []bool{false, true, false}},
		{"unhealthy threshold 3", 1, 3,
			[]bool{false, false, false, true}, []bool{true, true, false, true}},
		{"healthy threshold 2", 2, 1,
			[]bool{false, true, true}, []bool{false, false, true}},
		{"a pass breaks a failure streak", 1, 2,
			[]bool{false, true, false, false}, []bool{true, true, true, false}},
		{"a failure breaks a pass streak", 2, 1,
			[]bool{false, true, false, true, true}, []bool{false, false, false, false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := newFakeProbes()
				setPass := func(pass bool) {
					if pass {
						fake.set("a.test", fakeAnswer{})
					} else {
						fake.set("a.test", fakeAnswer{status: 503})
					}
				}
				cfg := regConfig(5*time.Second, 1, "http://a.test", "http://ok.test")
				cfg.HealthyThreshold, cfg.UnhealthyThreshold = tt.healthyN, tt.unhealthy
				setPass(tt.passes[0])
				r, _ := startRegistry(t, cfg, fake.probe, testLogger(t))
				for i, pass := range tt.passes {
					if i > 0 {
						setPass(pass)
						time.Sleep(cfg.Interval)
					}
					synctest.Wait()
					st := statusOf(t, r, "http://a.test")
					assert.Equal(t, tt.want[i], st.Healthy, "after probe %d", i)
					assert.Equal(t, tt.want[i], slices.Contains(healthyURLs(r), "http://a.test"), "snapshot after probe %d", i)
					assert.Contains(t, healthyURLs(r), "http://ok.test")
				}
			})
		})
	}
}

func TestRegistryPassiveFailureEjectsAndProbesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		cfg := regConfig(10*time.Second, 2, "http://a.test", "http://b.test")
		cfg.HealthyThreshold, cfg.UnhealthyThreshold = 2, 3
		r, _ := startRegistry(t, cfg, fake.probe, testLogger(t))
		synctest.Wait()
		start := time.Now()

		b := r.Healthy()[1]
		require.Equal(t, "http://b.test", b.URL.String())
		fake.set("b.test", fakeAnswer{err: errors.New("connection refused")})
		r.ReportFailure(t.Context(), b, errors.New("dial tcp: connection refused"))
		synctest.Wait()

		assert.Equal(t, []string{"http://a.test"}, healthyURLs(r), "ejected despite unhealthy_threshold 3")
		assert.Equal(t, []time.Time{start, start}, fake.callTimes("b.test"), "probed again at once")
		st := statusOf(t, r, "http://b.test")
		assert.False(t, st.Healthy)
		assert.Equal(t, 2, st.ConsecutiveFailures, "the passive failure and the probe")

		// Recovery takes healthy_threshold passing probes.
		fake.set("b.test", fakeAnswer{})
		time.Sleep(cfg.Interval)
		synctest.Wait()
		assert.Equal(t, []string{"http://a.test"}, healthyURLs(r), "one pass is not enough")
		time.Sleep(cfg.Interval)
		synctest.Wait()
		assert.Equal(t, []string{"http://a.test", "http://b.test"}, healthyURLs(r))
		assert.Equal(t, b, r.Healthy()[1], "same backend value after recovery")
	})
}

func TestRegistryReportFailureForEjectedOrUnknownBackendIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		r, _ := startRegistry(t, regConfig(10*time.Second, 1, "http://a.test"), fake.probe, testLogger(t))
		synctest.Wait()
		a := r.Healthy()[0]
		fake.set("a.test", fakeAnswer{status: 502})
		r.ReportFailure(t.Context(), a, errors.New("boom"))
		synctest.Wait()
		require.Empty(t, r.Healthy())
		require.Len(t, fake.callTimes("a.test"), 2)

		r.ReportFailure(t.Context(), a, errors.New("again"))
		r.ReportFailure(t.Context(), messages.Backend{ID: 999}, errors.New("stranger"))
		synctest.Wait()
		assert.Len(t, fake.callTimes("a.test"), 2, "no extra probe")
		assert.Equal(t, "unhealthy status 502", statusOf(t, r, "http://a.test").LastError)
	})
}

// A probe that passed while a passive failure was being reported must not
// bring the backend straight back: its verdict predates the failure.
func TestRegistryStaleProbeDoesNotUndoPassiveFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		gate := make(chan struct{})
		fake.set("a.test", fakeAnswer{gate: gate})
		r, _ := startRegistry(t, regConfig(10*time.Second, 1, "http://a.test"), fake.probe, testLogger(t))
		synctest.Wait() // the first probe is in flight, held by the gate

		r.ReportFailure(t.Context(), r.Healthy()[0], errors.New("connection reset"))
		synctest.Wait()
		require.Empty(t, r.Healthy())
		fake.set("a.test", fakeAnswer{err: errors.New("connection refused")})
		close(gate) // the in-flight probe passes
		synctest.Wait()

		assert.Empty(t, r.Healthy(), "stale pass ignored")
		assert.Len(t, fake.callTimes("a.test"), 2, "probed again after the stale result")
		assert.Equal(t, "connection refused", statusOf(t, r, "http://a.test").LastError)
	})
}

func TestRegistryHungBackendDoesNotDelayOthers(t *testing.T) {
	tests := []struct {
		name      string
		workers   int
		wantDelay time.Duration // when the others are probed, after start
	}{
		{"one worker waits at most the timeout", 1, 2 * time.Second},
		{"two workers do not wait", 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := newFakeProbes()
				fake.set("hung.test", fakeAnswer{hang: true})
				cfg := regConfig(10*time.Second, tt.workers, "http://hung.test", "http://b.test", "http://c.test")
				cfg.Timeout = 2 * time.Second
				start := time.Now()
				r, _ := startRegistry(t, cfg, fake.probe, testLogger(t))

				time.Sleep(cfg.Timeout)
				synctest.Wait()
				for _, h := range []string{"b.test", "c.test"} {
					assert.Equal(t, []time.Time{start.Add(tt.wantDelay)}, fake.callTimes(h), h)
				}
				assert.Equal(t, []string{"http://b.test", "http://c.test"}, healthyURLs(r))
				st := statusOf(t, r, "http://hung.test")
				assert.Contains(t, st.LastError, context.DeadlineExceeded.Error())
				assert.Equal(t, cfg.Timeout, st.LastLatency)
			})
		})
	}
}
