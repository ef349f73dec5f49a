package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/config"
	"github.com/tollgate/tollgate/httpapi/openapitest"
)

// liveApp is an in-process Tollgate whose app the test holds, so that it
// can call reload directly instead of sending SIGHUP. It is wired as run
// wires it, minus the signal.
type liveApp struct {
	a    *app
	path string         // the configuration file reload reads
	cfg  map[string]any // what the file holds now
	addr string         // main port, serving the admin API too
	logs *logBuffer
	log  *slog.Logger
	hc   *http.Client
}

func startLiveApp(t *testing.T, cfg map[string]any) *liveApp {
	t.Helper()
	la := &liveApp{cfg: cfg, logs: &logBuffer{}, hc: opsHTTPClient(t)}
	dsn, _ := cfg["database_url"].(string)
	t.Setenv("DATABASE_URL", dsn) // as start does: make test exports one
	la.path = writeConfig(t, cfg)
	c, err := config.Load(la.path)
	require.NoError(t, err)
	log, level, closeLog, err := newLogger(c, la.logs)
	require.NoError(t, err)
	la.log = log
	ctx, cancel := context.WithCancel(context.Background())
	store, err := openStore(ctx, c, log)
	require.NoError(t, err)
	la.a, err = assemble(ctx, c, store, log)
	require.NoError(t, err)
	la.a.live.path, la.a.live.level = la.path, level
	servers, err := listen(c, options{configPath: la.path, addr: "127.0.0.1:0"}, la.a, log)
	require.NoError(t, err)
	la.addr = servers[0].ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- la.a.run(ctx, servers, c.ShutdownTimeout, log) }() // waited for in Cleanup
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
		assert.NoError(t, store.Close())
		closeLog()
	})
	return la
}

// rewrite changes the configuration file; reload applies it.
func (la *liveApp) rewrite(t *testing.T, change func(cfg map[string]any)) {
	t.Helper()
	change(la.cfg)
	data, err := json.Marshal(la.cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(la.path, data, 0o600))
}

func (la *liveApp) reload(t *testing.T) error {
	t.Helper()
	return la.a.reload(t.Context(), la.log)
}

func lbOf(cfg map[string]any) map[string]any { return cfg["load_balancer"].(map[string]any) }
func rlOf(cfg map[string]any) map[string]any { return cfg["rate_limiter"].(map[string]any) }

// opsHTTPClient is a client whose idle connections close with the test.
func opsHTTPClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: openapitest.Transport(t, tr), Timeout: 10 * time.Second}
}

// opsDo sends one request to addr and returns its status and body. It
// returns an error instead of failing, so load goroutines can use it.
func opsDo(hc *http.Client, method, url, key string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	return res.StatusCode, data, err
}

// opsClient is a client as the admin API shows it.
type opsClient struct {
	APIKey     string  `json:"api_key"`
	RatePerSec float64 `json:"rate_per_sec"`
	Capacity   int64   `json:"capacity"`
}

// opsCreate creates a client with body through the admin API on addr.
func opsCreate(t *testing.T, hc *http.Client, addr string, body map[string]any) opsClient {
	t.Helper()
	code, data, err := opsDo(hc, http.MethodPost, "http://"+addr+"/clients", "", body)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, code, "%s", data)
	var c opsClient
	require.NoError(t, json.Unmarshal(data, &c))
	return c
}

// opsGet forwards one GET through addr and requires a 200.
func opsGet(t *testing.T, hc *http.Client, addr, key string) {
	t.Helper()
	code, data, err := opsDo(hc, http.MethodGet, "http://"+addr+"/work", key, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, "%s", data)
}

// opsBackends reads GET /backends, by URL.
func opsBackends(t *testing.T, hc *http.Client, addr string) map[string]map[string]any {
	t.Helper()
	code, data, err := opsDo(hc, http.MethodGet, "http://"+addr+"/backends", "", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, "%s", data)
	var out struct {
		Backends []map[string]any `json:"backends"`
	}
	require.NoError(t, json.Unmarshal(data, &out))
	m := map[string]map[string]any{}
	for _, b := range out.Backends {
		m[b["url"].(string)] = b
	}
	return m
}

// opsEventually waits for cond, checking every 10ms, for up to 10s.
func opsEventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// opsBackend is a test upstream: its health endpoint answers healthy
// unless sick is set, and other paths count hits. With hold set, the
// first hold requests wait at a gate until open.
type opsBackend struct {
	*httptest.Server
	sick    atomic.Bool
	hits    atomic.Int64 // requests other than health probes
	hold    atomic.Int64 // how many requests to hold
	held    atomic.Int64 // requests waiting at the gate now
	gated   atomic.Int64 // requests that came while hold was set
	gate    chan struct{}
	release sync.Once
}

func newOpsBackend(t *testing.T) *opsBackend {
	t.Helper()
	b := &opsBackend{gate: make(chan struct{})}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			if b.sick.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		b.hits.Add(1)
		if n := b.hold.Load(); n > 0 && b.gated.Add(1) <= n {
			b.held.Add(1)
			<-b.gate
			b.held.Add(-1)
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(b.Close)
	t.Cleanup(b.open) // before Close: held requests must finish
	return b
}

func (b *opsBackend) open() { b.release.Do(func() { close(b.gate) }) }

func TestReloadAddsBackendOnlyAfterItsProbePasses(t *testing.T) {
	a, b := newOpsBackend(t), newOpsBackend(t)
	b.sick.Store(true)
	la := startLiveApp(t, baseConfig(t, a.URL))
	key := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "c", "rate_per_sec": 1000, "capacity": 1000}).APIKey

	la.rewrite(t, func(c map[string]any) { lbOf(c)["backend_urls"] = []string{a.URL, b.URL} })
	require.NoError(t, la.reload(t))
	require.Contains(t, opsBackends(t, la.hc, la.addr), b.URL)
	for range 10 {
		opsGet(t, la.hc, la.addr, key)
	}
	assert.Zero(t, b.hits.Load(), "a new backend takes no traffic before a probe passes")
	opsEventually(t, func() bool {
		st := opsBackends(t, la.hc, la.addr)[b.URL]
		return st["last_status"] == 503.0
	}, "the failed probe of the new backend to show in /backends")
	st := opsBackends(t, la.hc, la.addr)[b.URL]
	assert.Equal(t, false, st["healthy"])
	assert.Contains(t, st["last_error"], "503")
	assert.NotNil(t, st["since"], "down since when")

	b.sick.Store(false)
	opsEventually(t, func() bool {
		opsGet(t, la.hc, la.addr, key)
		return b.hits.Load() > 0
	}, "the new backend to take traffic after its probe passes")
	assert.Equal(t, 1, len(la.logs.lines("config reloaded")))
}

func TestReloadRemovesBackendUnderLoadWithoutFailedRequests(t *testing.T) {
	a, b := newOpsBackend(t), newOpsBackend(t)
	cfg := baseConfig(t, a.URL, b.URL)
	lbOf(cfg)["request_timeout"] = 30 // held requests must not time out and retry
	la := startLiveApp(t, cfg)
	key := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "c", "rate_per_sec": 1e6, "capacity": 1000000}).APIKey

	// The next two requests reaching b wait until the test opens the gate;
	// the other two workers keep going.
	b.hold.Store(2)
	var served, failed atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, data, err := opsDo(la.hc, http.MethodGet, "http://"+la.addr+"/work", key, nil)
				if err != nil || code != http.StatusOK {
					failed.Add(1)
					failures.Store(code, string(data)+errString(err))
					continue
				}
				served.Add(1)
			}
		})
	}
	opsEventually(t, func() bool { return b.held.Load() == 2 }, "requests in flight on the backend to remove")

	la.rewrite(t, func(c map[string]any) { lbOf(c)["backend_urls"] = []string{a.URL} })
	require.NoError(t, la.reload(t))
	assert.NotContains(t, opsBackends(t, la.hc, la.addr), b.URL)
	after := served.Load()
	opsEventually(t, func() bool { return served.Load() > after+50 }, "the remaining backend to serve")
	b.open() // the requests in flight on the removed backend finish
	close(stop)
	wg.Wait()
	assert.Zero(t, b.held.Load())

	assert.Zero(t, failed.Load(), "no request failed")
	failures.Range(func(k, v any) bool { t.Logf("status %v: %v", k, v); return true })
	hits := b.hits.Load()
	for range 20 {
		opsGet(t, la.hc, la.addr, key)
	}
	assert.Equal(t, hits, b.hits.Load(), "a removed backend takes no new requests")
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestReloadOfInvalidConfigKeepsTheRunningOne(t *testing.T) {
	a, c := newOpsBackend(t), newOpsBackend(t)
	la := startLiveApp(t, baseConfig(t, a.URL))
	key := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "c", "rate_per_sec": 1000, "capacity": 1000}).APIKey

	la.rewrite(t, func(cfg map[string]any) {
		lbOf(cfg)["backend_urls"] = []string{a.URL, c.URL}
		lbOf(cfg)["max_retries"] = -1
		cfg["log_level"] = "error"
	})
	err := la.reload(t)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "load_balancer.max_retries")
	assert.True(t, config.IsConfigError(err))

	assert.NotContains(t, opsBackends(t, la.hc, la.addr), c.URL, "the backends are the old ones")
	for range 5 {
		opsGet(t, la.hc, la.addr, key)
	}
	assert.Zero(t, c.hits.Load())
	assert.NotEmpty(t, la.logs.lines("request"), "the log level is still debug")

	la.rewrite(t, func(cfg map[string]any) { cfg["port"] = "not json for a port" })
	require.Error(t, la.reload(t))
	require.NoError(t, os.WriteFile(la.path, []byte("{"), 0o600))
	require.Error(t, la.reload(t))
	require.NoError(t, os.Remove(la.path))
	require.Error(t, la.reload(t))
	opsGet(t, la.hc, la.addr, key)
}

func TestReloadChangesLogLevel(t *testing.T) {
	a := newOpsBackend(t)
	cfg := baseConfig(t, a.URL)
	cfg["log_level"] = "info"
	la := startLiveApp(t, cfg)
	key := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "c", "rate_per_sec": 1000, "capacity": 1000}).APIKey

	opsGet(t, la.hc, la.addr, key)
	assert.Empty(t, la.logs.lines("request"), "access lines are debug")

	la.rewrite(t, func(c map[string]any) { c["log_level"] = "debug" })
	require.NoError(t, la.reload(t))
	opsGet(t, la.hc, la.addr, key)
	opsEventually(t, func() bool { return len(la.logs.lines("request")) == 1 }, "a debug access line")

	la.rewrite(t, func(c map[string]any) { c["log_level"] = "warn" })
	require.NoError(t, la.reload(t))
	opsGet(t, la.hc, la.addr, key)
	assert.Len(t, la.logs.lines("request"), 1)
}

func TestReloadChangesDefaultsForNewClientsOnly(t *testing.T) {
	a := newOpsBackend(t)
	la := startLiveApp(t, baseConfig(t, a.URL))
	before := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "before"})
	assert.Equal(t, int64(20), before.Capacity)
	assert.Equal(t, 5.0, before.RatePerSec)

	la.rewrite(t, func(c map[string]any) {
		rlOf(c)["default_capacity"] = 7
		rlOf(c)["default_rate_per_sec"] = 0.5
	})
	require.NoError(t, la.reload(t))
	after := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "after"})
	assert.Equal(t, int64(7), after.Capacity)
	assert.Equal(t, 0.5, after.RatePerSec)
	given := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "given", "capacity": 3})
	assert.Equal(t, int64(3), given.Capacity, "a client's own limits win")

	code, data, err := opsDo(la.hc, http.MethodGet, "http://"+la.addr+"/clients/before", "", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, string(data), `"capacity":20`, "existing clients keep their limits")
}

func TestReloadChangesRetries(t *testing.T) {
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(bad.Close)
	good := newOpsBackend(t)
	cfg := baseConfig(t, bad.URL, good.URL)
	// Outlier detection would eject bad after 5 failed answers; this test
	// is about retries.
	lbOf(cfg)["outlier"] = map[string]any{"consecutive_failures": 0}
	la := startLiveApp(t, cfg)
	key := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "c", "rate_per_sec": 1000, "capacity": 1000}).APIKey
	codes := func() map[int]int {
		out := map[int]int{}
		for range 6 {
			code, _, err := opsDo(la.hc, http.MethodGet, "http://"+la.addr+"/work", key, nil)
			require.NoError(t, err)
			out[code]++
		}
		return out
	}
	assert.Equal(t, map[int]int{200: 6}, codes(), "max_retries 2: the good backend answers")

	la.rewrite(t, func(c map[string]any) { lbOf(c)["max_retries"] = 0 })
	require.NoError(t, la.reload(t))
	assert.Equal(t, map[int]int{200: 3, 503: 3}, codes(), "max_retries 0: round-robin, no second attempt")
}

func TestReloadWarnsAboutRestartOnlyFields(t *testing.T) {
	a := newOpsBackend(t)
	la := startLiveApp(t, baseConfig(t, a.URL))
	la.rewrite(t, func(c map[string]any) {
		c["port"] = 9999
		c["state_file"] = "elsewhere.db"
		c["admin_api_key"] = "super-secret-admin-key"
		rlOf(c)["hash_api_keys"] = true
		lbOf(c)["max_retries"] = 1
	})
	require.NoError(t, la.reload(t))
	var fields []string
	for _, l := range la.logs.lines("config field changes only at restart; keeping the running value") {
		assert.Equal(t, "WARN", l["level"])
		fields = append(fields, l["field"].(string))
	}
	assert.ElementsMatch(t, []string{"port", "state_file", "admin_api_key", "rate_limiter.hash_api_keys"}, fields)
	assert.NotContains(t, la.logs.String(), "super-secret-admin-key")
	assert.Equal(t, 8080, la.a.live.cfg.Port, "the running value stays")
	assert.Equal(t, 1, la.a.live.cfg.LoadBalancer.MaxRetries, "live fields apply")

	// The running values are what the next reload compares with.
	require.NoError(t, la.reload(t))
	assert.Len(t, la.logs.lines("config field changes only at restart; keeping the running value"), 8)
}

// TestSIGHUPReloadsTheConfigFile sends a real SIGHUP to the test process
// while run is watching for it. Every instance running in the process at
// that moment reloads its own (unchanged) file, which is harmless.
func TestSIGHUPReloadsTheConfigFile(t *testing.T) {
	a, c := newOpsBackend(t), newOpsBackend(t)
	cfg := baseConfig(t, a.URL)
	path := writeConfig(t, cfg)
	in := start(t, cfg, "-config", path) // the last -config wins
	hc := opsHTTPClient(t)

	require.NoError(t, os.WriteFile(path, []byte(`{"port": 8080, "load_balancer": {"backend_urls": ["htp:/x"]}}`), 0o600))
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	opsEventually(t, func() bool { return len(in.logs.lines("config reload failed; keeping the running configuration")) == 1 },
		"the failed reload to be logged")
	failed := in.logs.lines("config reload failed; keeping the running configuration")[0]
	assert.Equal(t, "ERROR", failed["level"])
	assert.Contains(t, failed["err"], "load_balancer.backend_urls[0]")
	assert.NotContains(t, opsBackends(t, hc, in.addr), "htp:/x")

	lbOf(cfg)["backend_urls"] = []string{a.URL, c.URL}
	data, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, data, 0o600))
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	opsEventually(t, func() bool { return len(in.logs.lines("config reloaded")) == 1 }, "the reload to be logged")
	assert.Contains(t, opsBackends(t, hc, in.addr), c.URL)

	require.NoError(t, in.stop())
	assert.True(t, strings.Contains(in.logs.String(), `"msg":"SIGHUP: reloading config"`))
}
