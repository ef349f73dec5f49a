package config_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/config"
)

// seed is SPEC 2's example, the base every invalid case mutates.
const seed = `{
  "port": 8080,
  "log_level": "debug",
  "log_file": "",
  "load_balancer": {
    "backend_urls": ["http://127.0.0.1:8081", "http://127.0.0.1:8082"],
    "health_check_interval": 10,
    "health_check_worker_count": 2,
    "max_retries": 2,
    "request_timeout": 2
  },
  "rate_limiter": {
    "add_tokens_interval": 5,
    "save_state_interval": 10,
    "remove_stale_interval": 300,
    "default_rate_per_sec": 5,
    "default_capacity": 20,
    "cache": { "time_to_live": 300 }
  }
}`

// seedConfig is what seed loads as, defaults included.
func seedConfig() *config.Config {
	return &config.Config{
		Port:                   8080,
		LogLevel:               "debug",
		StateFile:              "tollgate.db",
		ShutdownTimeout:        10 * time.Second,
		DatabaseConnectTimeout: 30 * time.Second,
		LoadBalancer: config.LoadBalancer{
			BackendURLs:            []string{"http://127.0.0.1:8081", "http://127.0.0.1:8082"},
			HealthCheckInterval:    10 * time.Second,
			HealthCheckWorkerCount: 2,
			HealthCheckPath:        "/health",
			HealthCheckTimeout:     2 * time.Second,
			HealthyThreshold:       1,
			UnhealthyThreshold:     1,
			MaxRetries:             2,
			RequestTimeout:         2 * time.Second,
			MaxRetryBodyBytes:      1 << 20,
			MaxRetryBufferBytes:    64 << 20,
			Policy:                 "round_robin",
			Outlier: config.Outlier{
				ConsecutiveFailures: 5,
				BaseEjectionTime:    30 * time.Second,
				MaxEjectionPercent:  50,
			},
			RetryBudget: config.RetryBudget{Percent: 20, MinRetries: 3},
		},
		RateLimiter: config.RateLimiter{
			AddTokensInterval:   5 * time.Second,
			SaveStateInterval:   10 * time.Second,
			RemoveStaleInterval: 300 * time.Second,
			DefaultRatePerSec:   5,
			DefaultCapacity:     20,
			CacheTTL:            300 * time.Second,
			LeaseTTL:            5 * time.Second,
			StoreDownPolicy:     "safe",
		},
	}
}

type removed struct{}

// remove as a value for with deletes the field.
var remove = removed{}

// with returns seed with the field at the dotted path set to value (or
// removed), creating objects on the way.
func with(t *testing.T, path string, value any) []byte {
	t.Helper()
	var doc map[string]any
	require.NoError(t, json.Unmarshal([]byte(seed), &doc))
	keys := strings.Split(path, ".")
	obj := doc
	for _, k := range keys[:len(keys)-1] {
		next, ok := obj[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			obj[k] = next
		}
		obj = next
	}
	last := keys[len(keys)-1]
	if value == remove {
		delete(obj, last)
	} else {
		obj[last] = value
	}
	data, err := json.Marshal(doc)
	require.NoError(t, err)
	return data
}

func noEnv(string) string { return "" }

func TestLoadShippedConfig(t *testing.T) {
	t.Setenv(config.EnvDatabaseURL, "")
	t.Setenv(config.EnvAdminKey, "")
	c, err := config.Load("../config.json")
	require.NoError(t, err)
	assert.Equal(t, seedConfig(), c)
}

func TestParseAppliesDefaults(t *testing.T) {
	c, err := config.Parse([]byte(`{"port": 8080, "load_balancer": {"backend_urls": ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]}}`))
	require.NoError(t, err)
	want := seedConfig()
	want.LogLevel = "info"
	assert.Equal(t, want, c)
}

func TestParseNullMeansDefault(t *testing.T) {
	c, err := config.Parse(with(t, "load_balancer.health_check_path", nil))
	require.NoError(t, err)
	assert.Equal(t, seedConfig(), c)
}

func TestLoadEveryField(t *testing.T) {
	want := &config.Config{
		Port:                   9000,
		AdminPort:              9001,
		LogLevel:               "warn",
		LogFile:                "/var/log/tollgate.log",
		DatabaseURL:            "postgres://file@db/tollgate",
		StateFile:              "state.db",
		AdminAPIKey:            "file-admin-key",
		ShutdownTimeout:        2500 * time.Millisecond,
		DatabaseConnectTimeout: 7500 * time.Millisecond,
		AccessLog:              true,
		Pprof:                  true,
		TLSCertFile:            "/etc/tollgate/cert.pem",
		TLSKeyFile:             "/etc/tollgate/key.pem",
		LoadBalancer: config.LoadBalancer{
			BackendURLs: []string{"http://backend-a:8081", "https://backend-b/api"},
			Policy:      "least_request",
			CAFile:      "/etc/tollgate/ca.pem",
			Outlier: config.Outlier{
				ConsecutiveFailures: 3,
				BaseEjectionTime:    500 * time.Millisecond,
				MaxEjectionPercent:  100,
			},
			RetryBudget:            config.RetryBudget{Percent: 12.5, MinRetries: 0},
			HealthCheckInterval:    500 * time.Millisecond,
			HealthCheckWorkerCount: 4,
			HealthCheckPath:        "/ready",
			HealthCheckTimeout:     250 * time.Millisecond,
			HealthyThreshold:       2,
			UnhealthyThreshold:     3,
			MaxRetries:             0,
			RequestTimeout:         1500 * time.Millisecond,
			MaxRetryBodyBytes:      0,
			MaxRetryBufferBytes:    4096,
		},
		RateLimiter: config.RateLimiter{
			AddTokensInterval:   100 * time.Millisecond,
			SaveStateInterval:   time.Second,
			RemoveStaleInterval: time.Minute,
			DefaultRatePerSec:   0.5,
			DefaultCapacity:     1000,
			CacheTTL:            30 * time.Second,
			HashAPIKeys:         true,
			LeaseTTL:            2500 * time.Millisecond,
			StoreDownPolicy:     "closed",
		},
	}
	c, err := config.LoadWithEnv("testdata/full.json", noEnv)
	require.NoError(t, err)
	assert.Equal(t, want, c)

	urls, err := c.ParsedBackends()
	require.NoError(t, err)
	require.Len(t, urls, 2)
	assert.Equal(t, "backend-a:8081", urls[0].Host)
	assert.Equal(t, "/api", urls[1].Path)
}

func TestParseWeightedBackends(t *testing.T) {
	doc := with(t, "load_balancer.backend_urls", remove)
	var m map[string]any
	require.NoError(t, json.Unmarshal(doc, &m))
	m["load_balancer"].(map[string]any)["backends"] = []any{
		map[string]any{"url": "http://A:1/", "weight": 3},
		map[string]any{"url": "http://b:2"},
	}
	doc, err := json.Marshal(m)
	require.NoError(t, err)
	c, err := config.Parse(doc)
	require.NoError(t, err)
	lb := c.LoadBalancer
	assert.Equal(t, []string{"http://a:1", "http://b:2"}, lb.BackendURLs)
	assert.Equal(t, []int{3, 1}, lb.Weights)
	assert.Equal(t, 3, lb.Weight(0))
	assert.Equal(t, 1, lb.Weight(1))
	assert.Equal(t, 1, seedConfig().LoadBalancer.Weight(1), "backend_urls weigh 1 each")
}

func TestLoadEnvOverrides(t *testing.T) {
	env := map[string]string{
		"DATABASE_URL":       "postgres://env@db/tollgate",
		"TOLLGATE_ADMIN_KEY": "env-admin-key",
	}
	c, err := config.LoadWithEnv("testdata/full.json", func(k string) string { return env[k] })
	require.NoError(t, err)
	assert.Equal(t, "postgres://env@db/tollgate", c.DatabaseURL)
	assert.Equal(t, "env-admin-key", c.AdminAPIKey)

	// Parse reads no environment, whatever the process has.
	t.Setenv(config.EnvAdminKey, "process-key")
	c, err = config.Parse([]byte(seed))
	require.NoError(t, err)
	assert.Empty(t, c.AdminAPIKey)
	c, err = config.Load("testdata/full.json")
	require.NoError(t, err)
	assert.Equal(t, "process-key", c.AdminAPIKey)
}

func TestLoadEnvDatabaseURLLiftsStateFileRequirement(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, with(t, "state_file", ""), 0o600))

	_, err := config.LoadWithEnv(path, noEnv)
	require.ErrorContains(t, err, `state_file: "" must name a file when database_url is empty`)

	c, err := config.LoadWithEnv(path, func(k string) string {
		if k == "DATABASE_URL" {
			return "postgres://db/tollgate"
		}
		return ""
	})
	require.NoError(t, err)
	assert.Equal(t, "postgres://db/tollgate", c.DatabaseURL)
}

func TestParseHealthCheckTimeoutDefault(t *testing.T) {
	tests := []struct {
		name              string
		interval, request float64
		want              time.Duration
	}{
		{name: "request timeout is shorter", interval: 10, request: 2, want: 2 * time.Second},
		{name: "interval is shorter", interval: 0.5, request: 2, want: 500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := fmt.Sprintf(`{"port": 1, "load_balancer": {"backend_urls": ["http://a"],
				"health_check_interval": %g, "request_timeout": %g}}`, tt.interval, tt.request)
			c, err := config.Parse([]byte(doc))
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.LoadBalancer.HealthCheckTimeout)
		})
	}
}

func TestParseAcceptsEdgeValues(t *testing.T) {
	tests := []struct {
		path  string
		value any
	}{
		{"port", 1},
		{"port", 65535},
		{"port", json.RawMessage("8.08e3")},
		{"admin_port", 65535},
		{"log_level", "ERROR"},
		{"load_balancer.max_retries", 0},
		{"load_balancer.max_retries", 100},
		{"load_balancer.backend_urls", []any{"https://[::1]:8443/base/"}},
		{"rate_limiter.default_rate_per_sec", 1e6},
		{"rate_limiter.default_rate_per_sec", 0.001},
		{"rate_limiter.default_capacity", json.RawMessage("1e9")},
		{"rate_limiter.cache.time_to_live", 0.001},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s=%v", tt.path, tt.value), func(t *testing.T) {
			_, err := config.Parse(with(t, tt.path, tt.value))
			assert.NoError(t, err)
		})
	}
}
