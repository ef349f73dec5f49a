package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// scrape reads GET /metrics from addr.
func scrape(t *testing.T, hc *http.Client, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	code, data, err := opsDo(hc, http.MethodGet, "http://"+addr+"/metrics", "", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, "%s", data)
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(data)))
	require.NoError(t, err)
	return mfs
}

// metricValue sums family name's samples whose labels include want: a
// counter's or gauge's value, a histogram's count. A family or series
// that is absent is 0.
func metricValue(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	mf := mfs[name]
	if mf == nil {
		return 0
	}
	sum := 0.0
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// TestMetricsMoveWithTraffic sends 200s, a retry through a failing
// backend, a 429 and 401s, then checks that each family moved between a
// scrape before and one after.
func TestMetricsMoveWithTraffic(t *testing.T) {
	good := newOpsBackend(t)
	// flaky passes its probes but answers every request 503, so requests
	// that pick it first are retried on good.
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(flaky.Close)
	in := start(t, baseConfig(t, good.URL, flaky.URL))
	hc := opsHTTPClient(t)

	before := scrape(t, hc, in.addr)
	big := opsCreate(t, hc, in.addr, map[string]any{"client_id": "big", "rate_per_sec": 1000, "capacity": 1000})
	small := opsCreate(t, hc, in.addr, map[string]any{"client_id": "small", "rate_per_sec": 0.01, "capacity": 1})
	for range 6 {
		opsGet(t, hc, in.addr, big.APIKey)
	}
	opsGet(t, hc, in.addr, small.APIKey)
	code, _, err := opsDo(hc, http.MethodGet, "http://"+in.addr+"/work", small.APIKey, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusTooManyRequests, code)
	for _, key := range []string{"", "unknown-key-0123456789"} {
		code, _, err := opsDo(hc, http.MethodGet, "http://"+in.addr+"/work", key, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusUnauthorized, code)
	}

	var after map[string]*dto.MetricFamily
	opsEventually(t, func() bool {
		after = scrape(t, hc, in.addr)
		// Both families of a save: a scrape reads one family after the
		// other, so it can catch a save between them.
		return metricValue(after, "tollgate_state_save_batch_clients", nil) > 0 &&
			metricValue(after, "tollgate_state_save_duration_seconds", nil) > 0
	}, "the persister to save the changed buckets")

	type series struct {
		name   string
		labels map[string]string
		min    float64 // the least it must have grown by
	}
	goodURL, flakyURL := good.URL, flaky.URL
	for _, s := range []series{
		{"tollgate_requests_total", map[string]string{"backend": goodURL, "status_class": "2xx"}, 7},
		{"tollgate_requests_total", map[string]string{"backend": "none", "status_class": "4xx"}, 3},
		{"tollgate_request_duration_seconds", map[string]string{"status_class": "2xx"}, 7},
		{"tollgate_request_duration_seconds", map[string]string{"status_class": "4xx"}, 3},
		{"tollgate_upstream_attempts_total", map[string]string{"backend": goodURL, "result": "success"}, 7},
		{"tollgate_upstream_attempts_total", map[string]string{"backend": flakyURL, "result": "bad_status"}, 1},
		{"tollgate_upstream_attempt_duration_seconds", map[string]string{"backend": goodURL}, 7},
		{"tollgate_upstream_attempt_duration_seconds", map[string]string{"backend": flakyURL}, 1},
		{"tollgate_retries_total", map[string]string{"backend": flakyURL}, 1},
		{"tollgate_rate_limited_total", nil, 1},
		{"tollgate_auth_failures_total", map[string]string{"reason": "missing"}, 1},
		{"tollgate_auth_failures_total", map[string]string{"reason": "unknown"}, 1},
		{"tollgate_cached_clients", nil, 2},
		{"tollgate_store_operation_duration_seconds", map[string]string{"operation": "create_client"}, 2},
		{"tollgate_store_operation_duration_seconds", map[string]string{"operation": "save_states"}, 1},
		{"tollgate_state_save_duration_seconds", nil, 1},
		{"tollgate_state_save_batch_clients", nil, 1},
	} {
		grew := metricValue(after, s.name, s.labels) - metricValue(before, s.name, s.labels)
		assert.GreaterOrEqual(t, grew, s.min, "%s%v", s.name, s.labels)
	}
	for _, url := range []string{goodURL, flakyURL} {
		assert.Equal(t, 1.0, metricValue(after, "tollgate_backend_up", map[string]string{"backend": url}), url)
		assert.GreaterOrEqual(t, metricValue(after, "tollgate_health_check_duration_seconds",
			map[string]string{"backend": url, "result": "success"}), 1.0, url)
	}
	for _, family := range []string{"tollgate_store_errors_total", "tollgate_config_reloads_total",
		"go_goroutines", "process_resident_memory_bytes", "process_cpu_seconds_total"} {
		assert.Contains(t, after, family)
	}
	assert.Zero(t, metricValue(after, "tollgate_store_errors_total", nil), "the embedded store did not fail")
	for name, mf := range after {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				assert.NotContains(t, []string{"client_id", "client"}, lp.GetName(), name)
				assert.NotContains(t, lp.GetValue(), big.APIKey, name)
			}
		}
	}
}

// TestMetricsLeases: with PostgreSQL, /metrics counts the leased
// decisions and the renewals that fed them; with the embedded store the
// lease families are absent.
func TestMetricsLeases(t *testing.T) {
	good := newOpsBackend(t)
	hc := opsHTTPClient(t)
	cfg := baseConfig(t, good.URL)
	cfg["database_url"] = pgtest.New(t) // before start sets DATABASE_URL for the embedded one
	embedded := start(t, baseConfig(t, good.URL))
	_, ok := scrape(t, hc, embedded.addr)["tollgate_lease_decisions_total"]
	assert.False(t, ok, "no leases without PostgreSQL")

	in := start(t, cfg)
	c := opsCreate(t, hc, in.addr, map[string]any{"client_id": "leased", "rate_per_sec": 1000, "capacity": 1000})
	for range 20 {
		opsGet(t, hc, in.addr, c.APIKey)
	}
	mfs := scrape(t, hc, in.addr)
	assert.Equal(t, 20.0, metricValue(mfs, "tollgate_lease_decisions_total", nil))
	assert.Positive(t, metricValue(mfs, "tollgate_lease_statements_total", nil))
	assert.GreaterOrEqual(t, metricValue(mfs, "tollgate_lease_renewals_total", nil), metricValue(mfs, "tollgate_lease_statements_total", nil))
	assert.LessOrEqual(t, metricValue(mfs, "tollgate_lease_waits_total", nil), 20.0)
	assert.Zero(t, metricValue(mfs, "tollgate_lease_store_down", nil))
	_, ok = mfs["tollgate_lease_store_down"]
	assert.True(t, ok)
}
