package config_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/config"
)

type raw = json.RawMessage

// badValues sets one field of seed each; want is the whole error message.
var badValues = []struct {
	path  string
	value any
	want  string
}{
	{"port", remove, `port: required but missing`},
	{"port", nil, `port: required but missing`},
	{"port", 0, `port: 0 must be between 1 and 65535`},
	{"port", 70000, `port: 70000 must be between 1 and 65535`},
	{"port", 8080.5, `port: 8080.5 is not an integer`},
	{"port", "8080", `port: "8080" is not an integer`},
	{"port", raw("1e400"), `port: 1e400 is out of range`},
	{"port", raw("1e300"), `port: 1e+300 is out of range`},
	{"admin_port", -1, `admin_port: -1 must be 0 or between 1 and 65535`},
	{"admin_port", 65536, `admin_port: 65536 must be 0 or between 1 and 65535`},
	{"admin_port", 8080, `admin_port: 8080 must differ from port (0 shares port)`},
	{"log_level", "loud", `log_level: "loud" must be one of debug, info, warn, error`},
	{"log_level", "", `log_level: "" must be one of debug, info, warn, error`},
	{"log_level", 5, `log_level: 5 is not a string`},
	{"log_level", []any{strings.Repeat("x", 50)}, `log_level: ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... is not a string`},
	{"log_file", false, `log_file: false is not a string`},
	{"database_url", 5, `database_url: 5 is not a string`},
	{"state_file", "", `state_file: "" must name a file when database_url is empty`},
	{"admin_api_key", true, `admin_api_key: true is not a string`},
	{"shutdown_timeout", 0, `shutdown_timeout: 0 must be > 0`},
	{"database_connect_timeout", 0, `database_connect_timeout: 0 must be > 0`},
	{"database_connect_timeout", "x", `database_connect_timeout: "x" is not a number of seconds`},
	{"shutdown_timeout", -1, `shutdown_timeout: -1 must be > 0`},
	{"shutdown_timeout", "10", `shutdown_timeout: "10" is not a number of seconds`},
	{"shutdown_timeout", 1e10, `shutdown_timeout: 1e+10 is out of range`},
	{"shutdown_timeout", raw("-1e300"), `shutdown_timeout: -1e+300 is out of range`},
	{"access_log", "yes", `access_log: "yes" is not true or false`},
	{"load_balancer", remove, `load_balancer.backend_urls: required but missing`},
	{"load_balancer.backend_urls", remove, `load_balancer.backend_urls: required but missing`},
	{"load_balancer.backend_urls", []any{}, `load_balancer.backend_urls: must list at least one backend`},
	{"load_balancer.backend_urls", "http://a", `load_balancer.backend_urls: "http://a" is not an array of strings`},
	{"load_balancer.backend_urls", []any{"http://a", 5}, `load_balancer.backend_urls[1]: 5 is not a string`},
	{"load_balancer.backend_urls", []any{nil}, `load_balancer.backend_urls[0]: null is not a string`},
	{"load_balancer.backend_urls", []any{"http://a", "htp:/x"}, `load_balancer.backend_urls[1]: "htp:/x" is not an absolute http(s) URL`},
	{"load_balancer.backend_urls", []any{"/relative"}, `load_balancer.backend_urls[0]: "/relative" is not an absolute http(s) URL`},
	{"load_balancer.backend_urls", []any{"http://"}, `load_balancer.backend_urls[0]: "http://" is not an absolute http(s) URL`},
	{"load_balancer.backend_urls", []any{"http://:80"}, `load_balancer.backend_urls[0]: "http://:80" is not an absolute http(s) URL`},
	{"load_balancer.backend_urls", []any{"ftp://a"}, `load_balancer.backend_urls[0]: "ftp://a" is not an absolute http(s) URL`},
	{"load_balancer.backend_urls", []any{"http:a"}, `load_balancer.backend_urls[0]: "http:a" is not an absolute http(s) URL`},
	{"load_balancer.backend_urls", []any{"http://a b"}, `load_balancer.backend_urls[0]: "http://a b" is not an absolute http(s) URL`},
	{"load_balancer.backend_urls", []any{"http://u:secret@a"}, `load_balancer.backend_urls[0]: "http://u:xxxxx@a" must not contain user info`},
	{"load_balancer.backend_urls", []any{"http://a?x=1"}, `load_balancer.backend_urls[0]: "http://a?x=1" must not have a query`},
	{"load_balancer.backend_urls", []any{"http://a#f"}, `load_balancer.backend_urls[0]: "http://a#f" must not have a fragment`},
	{"load_balancer.backend_urls", []any{"http://a:0"}, `load_balancer.backend_urls[0]: "http://a:0" has port 0, want 1 to 65535`},
	{"load_balancer.backend_urls", []any{"http://a:99999"}, `load_balancer.backend_urls[0]: "http://a:99999" has port 99999, want 1 to 65535`},
	{"load_balancer.backend_urls", []any{"http://a:80", "HTTP://A:80/"}, `load_balancer.backend_urls[1]: "HTTP://A:80/" duplicates backend_urls[0]`},
	{"load_balancer.health_check_interval", 0, `load_balancer.health_check_interval: 0 must be > 0`},
	{"load_balancer.health_check_interval", -1, `load_balancer.health_check_interval: -1 must be > 0`},
	{"load_balancer.health_check_interval", "x", `load_balancer.health_check_interval: "x" is not a number of seconds`},
	{"load_balancer.health_check_worker_count", 0, `load_balancer.health_check_worker_count: 0 must be between 1 and 1000`},
	{"load_balancer.health_check_worker_count", 1001, `load_balancer.health_check_worker_count: 1001 must be between 1 and 1000`},
	{"load_balancer.health_check_worker_count", 1.5, `load_balancer.health_check_worker_count: 1.5 is not an integer`},
	{"load_balancer.health_check_path", "health", `load_balancer.health_check_path: "health" must be a path starting with "/", without spaces`},
	{"load_balancer.health_check_path", "/a b", `load_balancer.health_check_path: "/a b" must be a path starting with "/", without spaces`},
	{"load_balancer.health_check_timeout", 0, `load_balancer.health_check_timeout: 0 must be > 0`},
	{"load_balancer.health_check_timeout", -0.5, `load_balancer.health_check_timeout: -0.5 must be > 0`},
	{"load_balancer.healthy_threshold", 0, `load_balancer.healthy_threshold: 0 must be >= 1`},
	{"load_balancer.unhealthy_threshold", -1, `load_balancer.unhealthy_threshold: -1 must be >= 1`},
	{"load_balancer.max_retries", -1, `load_balancer.max_retries: -1 must be between 0 and 100`},
	{"load_balancer.max_retries", 101, `load_balancer.max_retries: 101 must be between 0 and 100`},
	{"load_balancer.max_retries", "x", `load_balancer.max_retries: "x" is not an integer`},
	{"load_balancer.request_timeout", 0, `load_balancer.request_timeout: 0 must be > 0`},
	{"load_balancer.max_retry_body_bytes", -1, `load_balancer.max_retry_body_bytes: -1 must be >= 0`},
	{"load_balancer.max_retry_buffer_bytes", -1, `load_balancer.max_retry_buffer_bytes: -1 must be >= 0`},
	{"load_balancer.backends", []any{map[string]any{"url": "http://a"}}, `load_balancer.backends: set together with backend_urls; use one of them`},
	{"load_balancer.policy", "random", `load_balancer.policy: "random" must be one of round_robin, least_request`},
	{"load_balancer.policy", 1, `load_balancer.policy: 1 is not a string`},
	{"load_balancer.ca_file", false, `load_balancer.ca_file: false is not a string`},
	{"load_balancer.outlier", 5, `load_balancer.outlier: 5 is not an object`},
	{"load_balancer.outlier.consecutive_failures", -1, `load_balancer.outlier.consecutive_failures: -1 must be between 0 and 1000`},
	{"load_balancer.outlier.base_ejection_time", 0, `load_balancer.outlier.base_ejection_time: 0 must be > 0`},
	{"load_balancer.outlier.base_ejection_time", 1e18, `load_balancer.outlier.base_ejection_time: 1e+18 is out of range`},
	{"load_balancer.outlier.max_ejection_percent", 101, `load_balancer.outlier.max_ejection_percent: 101 must be between 0 and 100`},
	{"load_balancer.outlier.interval", 1, `load_balancer.outlier.interval: unknown field`},
	{"load_balancer.retry_budget.percent", -1, `load_balancer.retry_budget.percent: -1 must be between 0 and 100`},
	{"load_balancer.retry_budget.percent", 100.5, `load_balancer.retry_budget.percent: 100.5 must be between 0 and 100`},
	{"load_balancer.retry_budget.min_retries", -1, `load_balancer.retry_budget.min_retries: -1 must be between 0 and 1000000`},
	{"load_balancer.retry_budget.min_retries", 1.5, `load_balancer.retry_budget.min_retries: 1.5 is not an integer`},
	{"tls_cert_file", "cert.pem", `tls_key_file: "" must name the key of tls_cert_file`},
	{"tls_key_file", "key.pem", `tls_cert_file: "" must name the certificate of tls_key_file`},
	{"tls_cert_file", 5, `tls_cert_file: 5 is not a string`},
	{"rate_limiter", "x", `rate_limiter: "x" is not an object`},
	{"rate_limiter.add_tokens_interval", 0, `rate_limiter.add_tokens_interval: 0 must be > 0`},
	{"rate_limiter.save_state_interval", -1, `rate_limiter.save_state_interval: -1 must be > 0`},
	{"rate_limiter.remove_stale_interval", 0, `rate_limiter.remove_stale_interval: 0 must be > 0`},
	{"rate_limiter.default_rate_per_sec", 0, `rate_limiter.default_rate_per_sec: 0 must be > 0 and <= 1000000`},
	{"rate_limiter.default_rate_per_sec", 1e7, `rate_limiter.default_rate_per_sec: 1e+07 must be > 0 and <= 1000000`},
	{"rate_limiter.default_rate_per_sec", "5", `rate_limiter.default_rate_per_sec: "5" is not a number`},
	{"rate_limiter.default_capacity", 0, `rate_limiter.default_capacity: 0 must be between 1 and 1000000000`},
	{"rate_limiter.default_capacity", 2e9, `rate_limiter.default_capacity: 2000000000 must be between 1 and 1000000000`},
	{"rate_limiter.default_capacity", 1.5, `rate_limiter.default_capacity: 1.5 is not an integer`},
	{"rate_limiter.hash_api_keys", "true", `rate_limiter.hash_api_keys: "true" is not true or false`},
	{"rate_limiter.cache", 5, `rate_limiter.cache: 5 is not an object`},
	{"rate_limiter.cache.time_to_live", 0, `rate_limiter.cache.time_to_live: 0 must be > 0`},
	{"rate_limiter.lease_ttl", 0.1, `rate_limiter.lease_ttl: 0.1 must be >= 0.5`},
	{"rate_limiter.lease_ttl", "5", `rate_limiter.lease_ttl: "5" is not a number of seconds`},
	{"rate_limiter.store_down_policy", "fail", `rate_limiter.store_down_policy: "fail" must be one of safe, closed, open`},
	{"rate_limiter.store_down_policy", 1, `rate_limiter.store_down_policy: 1 is not a string`},
	{"prot", 8080, `prot: unknown field`},
	{"Port", 8080, `Port: unknown field`},
	{"load_balancer.backend_url", "http://a", `load_balancer.backend_url: unknown field`},
	{"rate_limiter.cache.ttl", 1, `rate_limiter.cache.ttl: unknown field`},
}

// badBackends replaces backend_urls with a backends list each; want is the
// whole error message.
var badBackends = []struct {
	value any
	want  string
}{
	{[]any{}, `load_balancer.backends: must list at least one backend`},
	{"http://a", `load_balancer.backends: "http://a" is not an array of objects`},
	{[]any{"http://a"}, `load_balancer.backends[0]: "http://a" is not an object`},
	{[]any{nil}, `load_balancer.backends[0]: null is not an object`},
	{[]any{map[string]any{"weight": 2}}, `load_balancer.backends[0].url: required but missing`},
	{[]any{map[string]any{"url": "htp:/x"}}, `load_balancer.backends[0].url: "htp:/x" is not an absolute http(s) URL`},
	{[]any{map[string]any{"url": "http://a", "weight": 0}}, `load_balancer.backends[0].weight: 0 must be between 1 and 100`},
	{[]any{map[string]any{"url": "http://a", "weight": 101}}, `load_balancer.backends[0].weight: 101 must be between 1 and 100`},
	{[]any{map[string]any{"url": "http://a", "weight": 1.5}}, `load_balancer.backends[0].weight: 1.5 is not an integer`},
	{[]any{map[string]any{"url": "http://a", "wieght": 2}}, `load_balancer.backends[0].wieght: unknown field`},
	{[]any{map[string]any{"url": "http://a"}, map[string]any{"url": "HTTP://A/"}}, `load_balancer.backends[1].url: "HTTP://A/" duplicates backends[0]`},
}

func TestParseRejectsBadBackends(t *testing.T) {
	for _, tt := range badBackends {
		t.Run(tt.want, func(t *testing.T) {
			var doc map[string]any
			require.NoError(t, json.Unmarshal(with(t, "load_balancer.backend_urls", remove), &doc))
			doc["load_balancer"].(map[string]any)["backends"] = tt.value
			data, err := json.Marshal(doc)
			require.NoError(t, err)
			_, err = config.Parse(data)
			require.Error(t, err)
			assert.Equal(t, "config: "+tt.want, err.Error())
		})
	}
}

func TestParseRejectsBadValues(t *testing.T) {
	for _, tt := range badValues {
		t.Run(tt.want, func(t *testing.T) {
			_, err := config.Parse(with(t, tt.path, tt.value))
			require.Error(t, err)
			assert.Equal(t, "config: "+tt.want, err.Error())
			var cerr *config.Error
			require.ErrorAs(t, err, &cerr)
			wantPath, _, _ := strings.Cut(tt.want, ": ")
			assert.Equal(t, wantPath, cerr.Path)
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	doc := `{"port": 0, "log_level": "loud", "extra": 1, "load_balancer": 5}`
	_, err := config.Parse([]byte(doc))
	require.Error(t, err)
	assert.Equal(t, `config: load_balancer: 5 is not an object; `+
		`load_balancer.backend_urls: required but missing; extra: unknown field`, err.Error())

	// Values are checked once the document decodes, all at once.
	doc = `{"port": 0, "log_level": "loud", "load_balancer": {"backend_urls": []}}`
	_, err = config.Parse([]byte(doc))
	require.Error(t, err)
	assert.Equal(t, `config: port: 0 must be between 1 and 65535; `+
		`log_level: "loud" must be one of debug, info, warn, error; `+
		`load_balancer.backend_urls: must list at least one backend`, err.Error())
	var cerr *config.Error
	require.ErrorAs(t, err, &cerr)
	assert.Equal(t, "port", cerr.Path)
}

func TestParseMalformedDocument(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want string
	}{
		{"trailing comma", "{\n  \"port\": 8080,\n}", `line 3, column 1: invalid character '}' looking for beginning of object key string`},
		{"trailing data", `{"port": 8080} {}`, `line 1, column 16: invalid character '{' after top-level value`},
		{"column counts runes", `{"ü": x}`, `line 1, column 7: invalid character 'x' looking for beginning of value`},
		{"truncated", `{"port": `, `line 1, column 9: unexpected end of JSON input`},
		{"empty", " \n", `empty document, want a JSON object`},
		{"array", `[]`, `the document must be a JSON object`},
		{"null", `null`, `the document must be a JSON object`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tt.doc))
			require.Error(t, err)
			assert.Equal(t, "config: "+tt.want, err.Error())
			assert.True(t, config.IsConfigError(err))
		})
	}
}

func TestLoadMalformedFileNamesFileLineAndColumn(t *testing.T) {
	_, err := config.LoadWithEnv("testdata/malformed.json", noEnv)
	require.Error(t, err)
	assert.Equal(t, `config: testdata/malformed.json: line 5, column 3: `+
		`invalid character '}' looking for beginning of object key string`, err.Error())
	assert.True(t, config.IsConfigError(err))
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.json")
	_, err := config.Load(path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), path)
	assert.Contains(t, err.Error(), "no such file")
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.True(t, config.IsConfigError(err))
}

func TestIsConfigError(t *testing.T) {
	assert.False(t, config.IsConfigError(nil))
	assert.False(t, config.IsConfigError(errors.New("boom")))
	assert.True(t, config.IsConfigError(&config.Error{Path: "port", Msg: "bad"}))
}

func TestValidateHandBuiltConfig(t *testing.T) {
	require.NoError(t, seedConfig().Validate())

	c := seedConfig()
	c.LoadBalancer.BackendURLs = []string{"http://a", "mailto:x"}
	c.RateLimiter.CacheTTL = 0
	err := c.Validate()
	require.Error(t, err)
	assert.Equal(t, `config: load_balancer.backend_urls[1]: "mailto:x" is not an absolute http(s) URL; `+
		`rate_limiter.cache.time_to_live: 0 must be > 0`, err.Error())

	_, err = c.ParsedBackends()
	assert.True(t, config.IsConfigError(err))
}
