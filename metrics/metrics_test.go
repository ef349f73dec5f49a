package metrics_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/actors"
	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/metrics"
	"github.com/tollgate/tollgate/pipeline"
)

var (
	_ pipeline.Observer        = (*metrics.Metrics)(nil)
	_ actors.RegistryObserver  = (*metrics.Metrics)(nil)
	_ actors.PersisterObserver = (*metrics.Metrics)(nil)
)

func backend(t *testing.T, id int, raw string) messages.Backend {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	return messages.Backend{ID: id, URL: u}
}

// gather returns the registry's families by name.
func gather(t *testing.T, m *metrics.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := m.Gatherer().Gather()
	require.NoError(t, err)
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// sample finds the metric of family name whose labels include want; nil
// when there is none.
func sample(t *testing.T, m *metrics.Metrics, name string, want map[string]string) *dto.Metric {
	t.Helper()
	mf := gather(t, m)[name]
	if mf == nil {
		return nil
	}
next:
	for _, mt := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range mt.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return mt
	}
	return nil
}

func counter(t *testing.T, m *metrics.Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	mt := sample(t, m, name, labels)
	require.NotNil(t, mt, "%s%v", name, labels)
	return mt.GetCounter().GetValue()
}

// counterOr0 is counter for a series that may not exist yet.
func counterOr0(t *testing.T, m *metrics.Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	return sample(t, m, name, labels).GetCounter().GetValue()
}

func histCount(t *testing.T, m *metrics.Metrics, name string, labels map[string]string) uint64 {
	t.Helper()
	mt := sample(t, m, name, labels)
	require.NotNil(t, mt, "%s%v", name, labels)
	return mt.GetHistogram().GetSampleCount()
}

func TestObserveRequestCountsByBackendAndStatusClass(t *testing.T) {
	m := metrics.New()
	a := backend(t, 1, "http://127.0.0.1:8081")
	tests := []struct {
		name  string
		b     messages.Backend
		code  int
		label string
		class string
	}{
		{"ok", a, 200, a.URL.String(), "2xx"},
		{"upstream 404", a, 404, a.URL.String(), "4xx"},
		{"no backend 401", messages.Backend{}, 401, "none", "4xx"},
		{"client gone", messages.Backend{}, 499, "none", "4xx"},
		{"no backend 503", messages.Backend{}, 503, "none", "5xx"},
		{"nonsense status", a, 0, a.URL.String(), "other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			labels := map[string]string{"backend": tt.label, "status_class": tt.class}
			before := counterOr0(t, m, "tollgate_requests_total", labels)
			durBefore := histCount(t, m, "tollgate_request_duration_seconds", map[string]string{"status_class": tt.class})
			m.ObserveRequest(tt.b, tt.code, 30*time.Millisecond)
			assert.Equal(t, before+1, counter(t, m, "tollgate_requests_total", labels))
			assert.Equal(t, durBefore+1, histCount(t, m, "tollgate_request_duration_seconds", map[string]string{"status_class": tt.class}))
		})
	}
}

// TestPipelineConstantsAreTheLabels pins the strings metrics repeats
// rather than imports: each pipeline constant lands on the resolved
// series of the same name.
func TestPipelineConstantsAreTheLabels(t *testing.T) {
	m := metrics.New()
	b := backend(t, 3, "http://10.0.0.3:80")
	for _, r := range []string{pipeline.AttemptSuccess, pipeline.AttemptError, pipeline.AttemptTimeout,
		pipeline.AttemptBadStatus, pipeline.AttemptCanceled} {
		t.Run(r, func(t *testing.T) {
			m.ObserveAttempt(b, r, time.Millisecond)
			assert.Equal(t, 1.0, counter(t, m, "tollgate_upstream_attempts_total",
				map[string]string{"backend": b.URL.String(), "result": r}))
		})
	}
	assert.EqualValues(t, 5, histCount(t, m, "tollgate_upstream_attempt_duration_seconds",
		map[string]string{"backend": b.URL.String()}))
	for _, r := range []string{pipeline.AuthMissing, pipeline.AuthMalformed, pipeline.AuthUnknown} {
		t.Run(r, func(t *testing.T) {
			m.AuthFailed(r)
			assert.Equal(t, 1.0, counter(t, m, "tollgate_auth_failures_total", map[string]string{"reason": r}))
		})
	}
	assert.Len(t, gather(t, m)["tollgate_auth_failures_total"].GetMetric(), 3, "reasons are resolved ahead")
}

func TestRetriesAndRateLimited(t *testing.T) {
	m := metrics.New()
	b := backend(t, 1, "http://b:1")
	m.Retry(b)
	m.Retry(b)
	m.RateLimited()
	assert.Equal(t, 2.0, counter(t, m, "tollgate_retries_total", map[string]string{"backend": "http://b:1"}))
	assert.Equal(t, 1.0, counter(t, m, "tollgate_rate_limited_total", nil))
}

// TestBackendIDReusedForAnotherURL: a backend ID names one URL per
// registry; another registry (in tests) may reuse it for another URL, and
// the series must follow the URL.
func TestBackendIDReusedForAnotherURL(t *testing.T) {
	m := metrics.New()
	m.ObserveRequest(backend(t, 1, "http://a:1"), 200, time.Millisecond)
	m.ObserveRequest(backend(t, 1, "http://b:1"), 200, time.Millisecond)
	assert.Equal(t, 1.0, counter(t, m, "tollgate_requests_total", map[string]string{"backend": "http://a:1", "status_class": "2xx"}))
	assert.Equal(t, 1.0, counter(t, m, "tollgate_requests_total", map[string]string{"backend": "http://b:1", "status_class": "2xx"}))
}

func TestConcurrentFirstRequestsOfManyBackends(t *testing.T) {
	m := metrics.New()
	bs := make([]messages.Backend, 16)
	for i := range bs {
		bs[i] = backend(t, i+1, fmt.Sprintf("http://b%d:80", i))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				b := bs[(g+i)%len(bs)]
				m.ObserveRequest(b, 200, time.Millisecond)
				m.ObserveAttempt(b, pipeline.AttemptSuccess, time.Millisecond)
			}
		})
	}
	wg.Wait()
	total := 0.0
	for _, b := range bs {
		total += counter(t, m, "tollgate_requests_total", map[string]string{"backend": b.URL.String(), "status_class": "2xx"})
	}
	assert.Equal(t, 800.0, total)
}

func TestRegistryObserver(t *testing.T) {
	m := metrics.New()
	b := backend(t, 1, "http://b:1")
	up := func() *dto.Metric {
		return sample(t, m, "tollgate_backend_up", map[string]string{"backend": "http://b:1"})
	}

	m.BackendUp(b, true)
	require.NotNil(t, up())
	assert.Equal(t, 1.0, up().GetGauge().GetValue())
	m.BackendUp(b, false)
	assert.Equal(t, 0.0, up().GetGauge().GetValue())

	m.ObserveProbe(b, true, 5*time.Millisecond)
	m.ObserveProbe(b, false, 2*time.Second)
	for _, r := range []string{"success", "failure"} {
		assert.EqualValues(t, 1, histCount(t, m, "tollgate_health_check_duration_seconds",
			map[string]string{"backend": "http://b:1", "result": r}))
	}

	m.ObserveRequest(b, 200, time.Millisecond)
	m.BackendRemoved(b)
	assert.Nil(t, up(), "a removed backend's gauge goes")
	assert.Equal(t, 1.0, counter(t, m, "tollgate_requests_total", map[string]string{"backend": "http://b:1", "status_class": "2xx"}),
		"its counters stay")
	m.ObserveRequest(b, 200, time.Millisecond) // an in-flight request finishing after removal
	assert.Equal(t, 2.0, counter(t, m, "tollgate_requests_total", map[string]string{"backend": "http://b:1", "status_class": "2xx"}))
}

func TestObserveSave(t *testing.T) {
	m := metrics.New()
	m.ObserveSave(3, 10*time.Millisecond, nil)
	m.ObserveSave(300, time.Second, messages.ErrUnavailable)
	mt := sample(t, m, "tollgate_state_save_batch_clients", nil)
	require.NotNil(t, mt)
	assert.EqualValues(t, 2, mt.GetHistogram().GetSampleCount())
	assert.Equal(t, 303.0, mt.GetHistogram().GetSampleSum())
	assert.EqualValues(t, 2, histCount(t, m, "tollgate_state_save_duration_seconds", nil))
}

func TestCachedClientsIsReadAtScrape(t *testing.T) {
	m := metrics.New()
	n := 0
	m.CachedClients(func() int { return n })
	n = 42
	mt := sample(t, m, "tollgate_cached_clients", nil)
	require.NotNil(t, mt)
	assert.Equal(t, 42.0, mt.GetGauge().GetValue())
}

func TestLeases(t *testing.T) {
	m := metrics.New()
	st := messages.LeaseStats{Statements: 3, Renewals: 7, FailedStatements: 1, Decisions: 1000, Waited: 2, StoreDown: true}
	m.Leases(func() messages.LeaseStats { return st })
	for name, want := range map[string]float64{
		"tollgate_lease_statements_total":         3,
		"tollgate_lease_renewals_total":           7,
		"tollgate_lease_statement_failures_total": 1,
		"tollgate_lease_decisions_total":          1000,
		"tollgate_lease_waits_total":              2,
	} {
		mt := sample(t, m, name, nil)
		require.NotNil(t, mt, name)
		assert.Equal(t, want, mt.GetCounter().GetValue(), name)
	}
	assert.Equal(t, 1.0, sample(t, m, "tollgate_lease_store_down", nil).GetGauge().GetValue())
	st.StoreDown = false
	assert.Equal(t, 0.0, sample(t, m, "tollgate_lease_store_down", nil).GetGauge().GetValue(), "read at each scrape")
}

func TestConfigReloaded(t *testing.T) {
	m := metrics.New()
	m.ConfigReloaded(true)
	m.ConfigReloaded(false)
	m.ConfigReloaded(false)
	assert.Equal(t, 1.0, counter(t, m, "tollgate_config_reloads_total", map[string]string{"result": "success"}))
	assert.Equal(t, 2.0, counter(t, m, "tollgate_config_reloads_total", map[string]string{"result": "failure"}))
}

func TestHandlerServesTextFormatThatPassesLint(t *testing.T) {
	m := metrics.New()
	m.CachedClients(func() int { return 1 })
	b := backend(t, 1, "http://b:1")
	m.ObserveRequest(b, 200, time.Millisecond)
	m.ObserveAttempt(b, pipeline.AttemptSuccess, time.Millisecond)
	m.Retry(b)
	m.RateLimited()
	m.BackendUp(b, true)
	m.ObserveProbe(b, true, time.Millisecond)
	m.ObserveSave(1, time.Millisecond, nil)
	m.InstrumentStore(&fakeStore{}).Ping(context.Background())

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Contains(t, rec.Header().Get("Content-Type"), "text/plain")
	body := rec.Body.String()
	for _, family := range []string{
		"tollgate_requests_total", "tollgate_request_duration_seconds", "tollgate_upstream_attempts_total",
		"tollgate_upstream_attempt_duration_seconds", "tollgate_retries_total", "tollgate_rate_limited_total",
		"tollgate_auth_failures_total", "tollgate_backend_up", "tollgate_health_check_duration_seconds",
		"tollgate_cached_clients", "tollgate_store_errors_total", "tollgate_store_operation_duration_seconds",
		"tollgate_state_save_duration_seconds", "tollgate_state_save_batch_clients", "tollgate_config_reloads_total",
		"go_goroutines", "go_memstats_alloc_bytes", "process_resident_memory_bytes",
	} {
		assert.Contains(t, body, "\n# TYPE "+family+" ", family)
	}

	problems, err := promlint.New(strings.NewReader(body)).Lint()
	require.NoError(t, err)
	var ours []promlint.Problem
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "tollgate_") {
			ours = append(ours, p)
		}
	}
	assert.Empty(t, ours, "Prometheus naming conventions")
}

// TestNoClientLabel: a label per client would be unbounded.
func TestNoClientLabel(t *testing.T) {
	m := metrics.New()
	m.ObserveRequest(backend(t, 1, "http://b:1"), 200, time.Millisecond)
	for name, mf := range gather(t, m) {
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				assert.NotContains(t, lp.GetName(), "client", name)
			}
		}
	}
}

// fakeStore is a persist.Store whose every operation returns err.
type fakeStore struct{ err error }

func (f *fakeStore) CreateClient(context.Context, messages.Client) error { return f.err }
func (f *fakeStore) GetClient(context.Context, string) (messages.Client, error) {
	return messages.Client{}, f.err
}
func (f *fakeStore) GetClientByKey(context.Context, messages.KeyHash) (messages.Client, error) {
	return messages.Client{}, f.err
}
func (f *fakeStore) ListClients(context.Context, string, int) ([]messages.Client, error) {
	return nil, f.err
}
func (f *fakeStore) KeyRefs(context.Context) ([]messages.KeyRef, error) { return nil, f.err }
func (f *fakeStore) UpdateLimits(context.Context, string, messages.Limits) (messages.Client, error) {
	return messages.Client{}, f.err
}
func (f *fakeStore) RotateKey(context.Context, string, string, messages.KeyHash, string) (messages.Client, error) {
	return messages.Client{}, f.err
}
func (f *fakeStore) DeleteClient(context.Context, string) (messages.Client, error) {
	return messages.Client{}, f.err
}
func (f *fakeStore) SaveStates(context.Context, []messages.BucketState) error { return f.err }
func (f *fakeStore) Ping(context.Context) error                               { return f.err }
func (f *fakeStore) Close() error                                             { return nil }

func TestInstrumentStoreCountsFailuresNotOutcomes(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		counted bool
	}{
		{"success", nil, false},
		{"not found", fmt.Errorf("persist: get: %w", messages.ErrNotFound), false},
		{"conflict", messages.ErrConflict, false},
		{"caller gave up", context.Canceled, false},
		{"unavailable", fmt.Errorf("persist: %w", messages.ErrUnavailable), true},
		{"timeout", context.DeadlineExceeded, true},
		{"other", io.ErrUnexpectedEOF, true},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := metrics.New()
			fake := &fakeStore{err: tt.err}
			s := m.InstrumentStore(fake)
			ops := map[string]func() error{
				"create_client":     func() error { return s.CreateClient(ctx, messages.Client{}) },
				"get_client":        func() error { _, err := s.GetClient(ctx, "x"); return err },
				"get_client_by_key": func() error { _, err := s.GetClientByKey(ctx, messages.KeyHash{}); return err },
				"list_clients":      func() error { _, err := s.ListClients(ctx, "", 1); return err },
				"key_refs":          func() error { _, err := s.KeyRefs(ctx); return err },
				"update_limits":     func() error { _, err := s.UpdateLimits(ctx, "x", messages.Limits{}); return err },
				"rotate_key":        func() error { _, err := s.RotateKey(ctx, "x", "", messages.KeyHash{}, ""); return err },
				"delete_client":     func() error { _, err := s.DeleteClient(ctx, "x"); return err },
				"save_states":       func() error { return s.SaveStates(ctx, nil) },
				"ping":              func() error { return s.Ping(ctx) },
			}
			want := 0.0
			if tt.counted {
				want = 1
			}
			for op, call := range ops {
				assert.ErrorIs(t, call(), tt.err, op)
				labels := map[string]string{"operation": op}
				assert.Equal(t, want, counter(t, m, "tollgate_store_errors_total", labels), op)
				assert.EqualValues(t, 1, histCount(t, m, "tollgate_store_operation_duration_seconds", labels), op)
			}
			require.NoError(t, s.Close())
		})
	}
}
