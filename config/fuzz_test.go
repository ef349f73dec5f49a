package config_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/config"
)

// FuzzParse checks that Parse never panics, that every error it returns is a
// configuration error, and that whatever it accepts holds the invariants the
// rest of Tollgate relies on, restated here independently of Validate.
func FuzzParse(f *testing.F) {
	full, err := os.ReadFile("testdata/full.json")
	require.NoError(f, err)
	f.Add([]byte(seed))
	f.Add(full)
	f.Add([]byte(`{"port": 1, "load_balancer": {"backend_urls": ["http://a"]}}`))
	f.Add([]byte(`{"port": 1, "load_balancer": {"backend_urls": ["HTTP://A:80/x/", "http://a:80/x"]}}`))
	f.Add([]byte(`{"port": 1e400, "load_balancer": {"backend_urls": [null]}}`))
	f.Add([]byte("{\n\"port\": 8080,\n}"))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.Parse(data)
		if err != nil {
			require.True(t, config.IsConfigError(err), "%v", err)
			return
		}
		require.NoError(t, c.Validate())
		require.True(t, c.Port >= 1 && c.Port <= 65535)
		require.True(t, c.AdminPort == 0 || c.AdminPort >= 1 && c.AdminPort <= 65535 && c.AdminPort != c.Port)
		require.Contains(t, []string{"debug", "info", "warn", "error"}, c.LogLevel)
		require.Positive(t, c.ShutdownTimeout)

		lb := c.LoadBalancer
		urls, err := c.ParsedBackends()
		require.NoError(t, err)
		require.NotEmpty(t, urls)
		seen := map[string]bool{}
		for i, u := range urls {
			require.Contains(t, []string{"http", "https"}, u.Scheme)
			require.NotEmpty(t, u.Hostname())
			require.Equal(t, lb.BackendURLs[i], u.String(), "backend URLs are stored in canonical form")
			require.False(t, seen[u.String()], "duplicate backend %s", u)
			seen[u.String()] = true
		}
		require.Positive(t, lb.HealthCheckInterval)
		require.Positive(t, lb.HealthCheckTimeout)
		require.Positive(t, lb.RequestTimeout)
		require.GreaterOrEqual(t, lb.HealthCheckWorkerCount, 1)
		require.True(t, lb.MaxRetries >= 0 && lb.MaxRetries <= 100)
		require.GreaterOrEqual(t, lb.HealthyThreshold, 1)
		require.GreaterOrEqual(t, lb.UnhealthyThreshold, 1)
		require.GreaterOrEqual(t, lb.MaxRetryBodyBytes, int64(0))
		require.GreaterOrEqual(t, lb.MaxRetryBufferBytes, int64(0))
		require.True(t, strings.HasPrefix(lb.HealthCheckPath, "/"))

		rl := c.RateLimiter
		require.Positive(t, rl.AddTokensInterval)
		require.Positive(t, rl.SaveStateInterval)
		require.Positive(t, rl.RemoveStaleInterval)
		require.Positive(t, rl.CacheTTL)
		require.True(t, rl.DefaultRatePerSec > 0 && rl.DefaultRatePerSec <= 1e6)
		require.True(t, rl.DefaultCapacity >= 1 && rl.DefaultCapacity <= 1e9)
	})
}

// FuzzParseBackendURL aims at backend URLs, which random documents rarely
// reach: an accepted URL is stored in a canonical form that is accepted as
// itself, and listing a URL beside its canonical form is a duplicate.
func FuzzParseBackendURL(f *testing.F) {
	for _, s := range []string{"http://a", "HTTPS://[::1]:8443/b/", "http://a/%2F/", "http://a#", "http://a:/x"} {
		f.Add(s)
	}
	parse := func(t *testing.T, urls ...string) (*config.Config, error) {
		doc, err := json.Marshal(map[string]any{"port": 1, "load_balancer": map[string]any{"backend_urls": urls}})
		require.NoError(t, err)
		return config.Parse(doc)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parse(t, s)
		if err != nil {
			require.True(t, config.IsConfigError(err), "%v", err)
			return
		}
		canonical := c.LoadBalancer.BackendURLs[0]
		again, err := parse(t, canonical)
		require.NoError(t, err)
		require.Equal(t, canonical, again.LoadBalancer.BackendURLs[0])
		_, err = parse(t, s, canonical)
		require.ErrorContains(t, err, "duplicates backend_urls[0]")
	})
}
