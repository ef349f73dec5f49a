package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// call sends one request to an instance and returns status and body.
func call(t *testing.T, method, url, key, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := checkedClient(t).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// within asserts that cond holds within one second: SPEC 6's bound for an
// admin change on one instance to take effect on the others.
func within(t *testing.T, what string, cond func() bool) {
	t.Helper()
	assert.Eventually(t, cond, time.Second, 10*time.Millisecond, what)
}

func TestAdminChangesReachAnotherInstanceWithinASecond(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	dsn := pgtest.New(t)
	cfg := baseConfig(t, backend.URL)
	cfg["database_url"] = dsn
	a := start(t, cfg)
	b := start(t, cfg)
	proxyB := "http://" + b.addr + "/x"

	code, body := call(t, http.MethodPost, "http://"+a.addr+"/clients", "", `{"client_id":"shared","capacity":1000,"rate_per_sec":1000}`)
	require.Equal(t, http.StatusCreated, code, body)
	var c struct {
		APIKey string `json:"api_key"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &c))
	status := func(key string) int { code, _ := call(t, http.MethodGet, proxyB, key, ""); return code }
	within(t, "created on A, admitted on B", func() bool { return status(c.APIKey) == http.StatusOK })

	code, body = call(t, http.MethodPatch, "http://"+a.addr+"/clients/shared", "", `{"capacity":1,"rate_per_sec":0.001}`)
	require.Equal(t, http.StatusOK, code, body)
	within(t, "capacity patched on A applies on B", func() bool { return status(c.APIKey) == http.StatusTooManyRequests })
	code, body = call(t, http.MethodPatch, "http://"+a.addr+"/clients/shared", "", `{"capacity":1000,"rate_per_sec":1000}`)
	require.Equal(t, http.StatusOK, code, body)

	code, body = call(t, http.MethodPost, "http://"+a.addr+"/clients/shared/rotate-key", "", "")
	require.Equal(t, http.StatusOK, code, body)
	var rotated struct {
		APIKey string `json:"api_key"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &rotated))
	within(t, "old key refused on B after rotation on A", func() bool { return status(c.APIKey) == http.StatusUnauthorized })
	within(t, "new key admitted on B", func() bool { return status(rotated.APIKey) == http.StatusOK })

	code, _ = call(t, http.MethodDelete, "http://"+a.addr+"/clients/shared", "", "")
	require.Equal(t, http.StatusNoContent, code)
	within(t, "deleted on A, refused on B", func() bool { return status(rotated.APIKey) == http.StatusUnauthorized })

	require.NoError(t, a.stop())
	require.NoError(t, b.stop())
}
