package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// lockedBuffer is stdout for run: written by the server, read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// listenAddr returns the "addr" of the "listening" log line, or "".
func (b *lockedBuffer) listenAddr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var line struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
			return line.Addr
		}
	}
	return ""
}

// startEchoback runs the program with args and returns its base URL;
// cleanup stops it and checks it returned nil.
func startEchoback(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("run did not return after cancel")
		}
	})
	var addr string
	require.Eventually(t, func() bool {
		addr = out.listenAddr()
		return addr != ""
	}, 5*time.Second, 5*time.Millisecond)
	return "http://" + addr
}

func testClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

func TestEchoback(t *testing.T) {
	base := startEchoback(t, "-addr", "127.0.0.1:0", "-name", "b1")
	client := testClient(t)

	tests := []struct {
		name   string
		method string
		path   string
		body   string
		want   map[string]any
	}{
		{"health", http.MethodGet, "/health", "",
			map[string]any{"status": "ok", "name": "b1"}},
		{"echo post", http.MethodPost, "/orders/7?x=1&x=2", "hello",
			map[string]any{"name": "b1", "method": "POST", "path": "/orders/7",
				"query": map[string]any{"x": []any{"1", "2"}}, "body_bytes": float64(5)}},
		{"post to health is echoed", http.MethodPost, "/health", "",
			map[string]any{"name": "b1", "method": "POST", "path": "/health", "body_bytes": float64(0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tt.method, base+tt.path, strings.NewReader(tt.body))
			require.NoError(t, err)
			req.Header.Set("X-Client-Id", "acme")
			resp, err := client.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			raw, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			var got map[string]any
			require.NoError(t, json.Unmarshal(raw, &got))
			for k, v := range tt.want {
				assert.Equal(t, v, got[k], k)
			}
			if tt.path != "/health" || tt.method != http.MethodGet {
				headers, _ := got["headers"].(map[string]any)
				assert.Equal(t, []any{"acme"}, headers["X-Client-Id"])
			}
		})
	}
}

func TestEchobackTakesDefaultsFromEnv(t *testing.T) {
	t.Setenv("ECHOBACK_ADDR", "127.0.0.1:0")
	t.Setenv("ECHOBACK_NAME", "from-env")
	base := startEchoback(t)
	resp, err := testClient(t).Get(base + "/health")
	require.NoError(t, err)
	defer resp.Body.Close()
	var got map[string]string
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
	assert.Equal(t, map[string]string{"status": "ok", "name": "from-env"}, got)
}

func TestEchobackBadFlag(t *testing.T) {
	var out bytes.Buffer
	err := run(t.Context(), []string{"-nope"}, &out)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "echoback:")
}

func TestEchobackListenError(t *testing.T) {
	var out bytes.Buffer
	err := run(t.Context(), []string{"-addr", "127.0.0.1:-1"}, &out)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "echoback: listen")
}
