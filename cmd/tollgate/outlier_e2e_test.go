package main

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// statusBackend answers every counted request with status.
func statusBackend(t *testing.T, status int) *liveBackend {
	t.Helper()
	return newLiveBackendWith(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
	}))
}

// namedBackend answers every counted request 200 with its name.
func namedBackend(t *testing.T, name string) *liveBackend {
	t.Helper()
	return newLiveBackendWith(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(name))
	}))
}

func TestOutlierEjectsABackendAnswering503(t *testing.T) {
	bad, good := statusBackend(t, http.StatusServiceUnavailable), namedBackend(t, "g")
	cfg := baseConfig(t, bad.url, good.url)
	setLB(cfg, map[string]any{"outlier": map[string]any{"consecutive_failures": 5, "base_ejection_time": 1}})
	in := start(t, cfg)
	hc := newHTTPClient(t)
	c := in.createClient(t, hc, "outlier", hugeRate, hugeCapacity)

	for bad.hits.Load() < 5 {
		r := in.mustForward(t, hc, c.APIKey, "/", nil)
		require.Equal(t, http.StatusOK, r.status, "retried on the good one")
	}
	st := in.backendsByURL(t, hc)
	var ejected struct {
		Backends []struct {
			URL            string  `json:"url"`
			Healthy        bool    `json:"healthy"`
			EjectedUntil   *string `json:"ejected_until"`
			EjectionReason string  `json:"ejection_reason"`
		} `json:"backends"`
	}
	in.adminJSON(t, hc, http.MethodGet, "/backends", nil, http.StatusOK, &ejected)
	require.Len(t, ejected.Backends, 2)
	assert.True(t, st[bad.url].Healthy, "its health checks pass")
	assert.NotNil(t, ejected.Backends[0].EjectedUntil)
	assert.Contains(t, ejected.Backends[0].EjectionReason, "5 failed answers in a row")
	assert.Nil(t, ejected.Backends[1].EjectedUntil)
	assert.Equal(t, 1.0, metricValue(scrape(t, hc, in.addr), "tollgate_outlier_ejections_total", map[string]string{"backend": bad.url}))

	// Every first attempt now goes to the good one.
	hits := bad.hits.Load()
	for range 20 {
		r := in.mustForward(t, hc, c.APIKey, "/", nil)
		require.Equal(t, http.StatusOK, r.status)
	}
	assert.Equal(t, hits, bad.hits.Load())

	// Back after a second and a passing probe: it takes requests again.
	eventually(t, func() bool {
		in.mustForward(t, hc, c.APIKey, "/", nil)
		return bad.hits.Load() > hits
	}, "the ejected backend to return")
}

func TestOutlierNeverEjectsBothOfTwo(t *testing.T) {
	a, b := statusBackend(t, http.StatusServiceUnavailable), statusBackend(t, http.StatusBadGateway)
	cfg := baseConfig(t, a.url, b.url)
	in := start(t, cfg)
	hc := newHTTPClient(t)
	c := in.createClient(t, hc, "outlier2", hugeRate, hugeCapacity)
	for range 30 {
		r := in.mustForward(t, hc, c.APIKey, "/", nil)
		require.Contains(t, []int{502, 503}, r.status, "the backend's answer goes to the client")
	}
	var out struct {
		Backends []struct {
			EjectedUntil *string `json:"ejected_until"`
		} `json:"backends"`
	}
	in.adminJSON(t, hc, http.MethodGet, "/backends", nil, http.StatusOK, &out)
	ejected := 0
	for _, b := range out.Backends {
		if b.EjectedUntil != nil {
			ejected++
		}
	}
	assert.Equal(t, 1, ejected, "max_ejection_percent 50 of 2")
}
