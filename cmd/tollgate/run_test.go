package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(removeBuiltBinary{m}) }

// logBuffer collects the JSON log lines of a run, safe for the test and
// the program to use at once.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the log lines whose msg is msg, decoded.
func (b *logBuffer) lines(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// instance is one in-process run of Tollgate.
type instance struct {
	addr, adminAddr string
	logs            *logBuffer
	stop            func() error
}

// baseConfig is a valid configuration for tests, forwarding to backends.
func baseConfig(t *testing.T, backends ...string) map[string]any {
	t.Helper()
	return map[string]any{
		"port":       8080,
		"log_level":  "debug",
		"state_file": filepath.Join(t.TempDir(), "state.db"),
		"load_balancer": map[string]any{
			"backend_urls":              backends,
			"health_check_interval":     0.2,
			"health_check_worker_count": 2,
			"max_retries":               2,
			"request_timeout":           2,
		},
		"rate_limiter": map[string]any{
			"add_tokens_interval":   1,
			"save_state_interval":   0.2,
			"remove_stale_interval": 300,
			"default_rate_per_sec":  5,
			"default_capacity":      20,
			"cache":                 map[string]any{"time_to_live": 300},
		},
	}
}

func writeConfig(t *testing.T, cfg any) string {
	t.Helper()
	data, err := json.Marshal(cfg)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, data, 0o600))
	return path
}

// start runs Tollgate with cfg on loopback ports until the test ends.
//
// DATABASE_URL overrides the config (SPEC 2), and make test exports one for
// the throwaway PostgreSQL: it is set here to the config's database_url,
// so a config without one really runs on the embedded store.
func start(t *testing.T, cfg map[string]any, extraArgs ...string) *instance {
	t.Helper()
	dsn, _ := cfg["database_url"].(string)
	t.Setenv("DATABASE_URL", dsn)
	logs := &logBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	args := append([]string{"-config", writeConfig(t, cfg), "-addr", "127.0.0.1:0"}, extraArgs...)
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, logs) }()
	var once sync.Once
	var runErr error
	in := &instance{logs: logs, stop: func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}}
	t.Cleanup(func() { _ = in.stop() })

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range logs.lines("listening") {
			switch l["server"] {
			case "main":
				in.addr = l["addr"].(string)
			case "admin":
				in.adminAddr = l["addr"].(string)
			}
		}
		if in.addr != "" {
			return in
		}
		select {
		case err := <-done:
			t.Fatalf("tollgate stopped at start: %v\n%s", err, logs)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("tollgate did not start listening:\n%s", logs)
	return nil
}

func TestConfigErrorsExitWithCode2NamingTheField(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(cfg map[string]any)
		want   string
	}{
		{"unknown field", func(c map[string]any) { c["bogus"] = 1 }, "bogus"},
		{"bad url", func(c map[string]any) {
			c["load_balancer"].(map[string]any)["backend_urls"] = []string{"http://127.0.0.1:1", "htp:/x"}
		}, "load_balancer.backend_urls[1]"},
		{"negative interval", func(c map[string]any) {
			c["rate_limiter"].(map[string]any)["save_state_interval"] = -1
		}, "rate_limiter.save_state_interval"},
		{"wrong type", func(c map[string]any) {
			c["load_balancer"].(map[string]any)["max_retries"] = "two"
		}, "load_balancer.max_retries"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig(t, "http://127.0.0.1:1")
			tt.mutate(cfg)
			err := run(t.Context(), []string{"-config", writeConfig(t, cfg)}, io.Discard)
			require.Error(t, err)
			assert.Equal(t, 2, exitCode(err))
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	t.Run("missing file", func(t *testing.T) {
		err := run(t.Context(), []string{"-config", filepath.Join(t.TempDir(), "nope.json")}, io.Discard)
		require.Error(t, err)
		assert.Equal(t, 2, exitCode(err))
		assert.Contains(t, err.Error(), "nope.json")
	})
	t.Run("bad flag", func(t *testing.T) {
		err := run(t.Context(), []string{"-no-such-flag"}, io.Discard)
		assert.Equal(t, 2, exitCode(err))
	})
}

func TestEmbeddedStoreStartsServesAndStops(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from backend")
	}))
	defer backend.Close()
	in := start(t, baseConfig(t, backend.URL))

	store := in.logs.lines("store opened")
	require.Len(t, store, 1)
	assert.Equal(t, "embedded", store[0]["store"])

	resp, err := checkedClient(t).Post("http://"+in.addr+"/clients", "application/json", strings.NewReader(`{"client_id":"e2e","capacity":2}`))
	require.NoError(t, err)
	var created struct {
		APIKey string `json:"api_key"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&created))
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)

	codes := make([]int, 3)
	for i := range codes {
		req, _ := http.NewRequest(http.MethodGet, "http://"+in.addr+"/anything", nil)
		req.Header.Set("Authorization", "Bearer "+created.APIKey)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		codes[i] = resp.StatusCode
		if resp.StatusCode == http.StatusOK {
			assert.Equal(t, "hello from backend", string(body))
		}
	}
	assert.Equal(t, []int{200, 200, 429}, codes)

	stopped := time.Now()
	require.NoError(t, in.stop())
	assert.Less(t, time.Since(stopped), 5*time.Second)
	assert.NotContains(t, in.logs.String(), created.APIKey, "keys never appear in logs")
}

// TestBinaryExitsZeroOnSIGTERM runs the real binary, as an operator would.
func TestBinaryExitsZeroOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "tollgate")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	cfg := baseConfig(t, "http://127.0.0.1:1")
	cmd := exec.Command(bin, "-config", writeConfig(t, cfg), "-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "DATABASE_URL=") // empty counts as unset
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	sc := bufio.NewScanner(stdout)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.Contains(sc.Text(), `"msg":"listening"`) {
			break
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	go func() { _, _ = io.Copy(io.Discard, stdout) }() // drained until the process exits
	require.NoError(t, cmd.Wait())
	assert.Equal(t, 0, cmd.ProcessState.ExitCode())
	assert.Contains(t, strings.Join(lines, "\n"), `"store":"embedded"`)
}
