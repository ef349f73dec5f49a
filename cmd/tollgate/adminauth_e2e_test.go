package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/config"
	"github.com/tollgate/tollgate/httpapi/openapitest"
)

// SPEC 4 "Admin authentication", rule by rule, on a running instance.

const testAdminKey = "admin-key-0123456789abcdef"

// adminRoute is one admin path with a request that succeeds on it.
type adminRoute struct {
	method, path, body string
	ok                 int
}

// adminRoutes are every admin route but the probes, each with a request
// that changes state where it can, so a refused one would show.
func adminRoutes() []adminRoute {
	return []adminRoute{
		{"POST", "/clients", `{"client_id":"created"}`, 201},
		{"GET", "/clients", "", 200},
		{"GET", "/clients/victim", "", 200},
		{"PATCH", "/clients", `{"client_id":"victim","capacity":3}`, 200},
		{"PATCH", "/clients/victim", `{"rate_per_sec":3}`, 200},
		{"POST", "/clients/victim/rotate-key", "", 200},
		{"DELETE", "/clients/doomed", "", 204},
		{"GET", "/backends", "", 200},
		{"GET", "/metrics", "", 200},
	}
}

// send makes one request with an optional raw Authorization value and
// returns the answer, body read. Admin paths are checked against the
// OpenAPI description.
func send(t *testing.T, method, url, authorization, body string) (*http.Response, string) {
	t.Helper()
	return sendWith(t, checkedClient(t), method, url, authorization, body)
}

// sendForwarded is send for admin paths on a port that forwards them,
// whose answers are the backend's, not the admin API's.
func sendForwarded(t *testing.T, method, url, authorization, body string) (*http.Response, string) {
	t.Helper()
	return sendWith(t, http.DefaultClient, method, url, authorization, body)
}

func sendWith(t *testing.T, hc *http.Client, method, url, authorization, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// withAdminKey is a config whose admin key is set, with no environment
// override (TOLLGATE_ADMIN_KEY would replace it).
func withAdminKey(t *testing.T, cfg map[string]any, key string) map[string]any {
	t.Helper()
	t.Setenv(config.EnvAdminKey, "")
	cfg["admin_api_key"] = key
	return cfg
}

func TestAdminAuthWithAdminKey(t *testing.T) {
	rec := newRecorder(t)
	in := start(t, withAdminKey(t, baseConfig(t, rec.url), testAdminKey))
	base := "http://" + in.addr
	right := "Bearer " + testAdminKey
	victimKey := createKey(t, in.addr, testAdminKey, "victim")
	createKey(t, in.addr, testAdminKey, "doomed")

	refused := map[string]string{
		"no Authorization":              "",
		"wrong key":                     "Bearer wrong-admin-key-0123456789",
		"key without the Bearer scheme": testAdminKey,
		"Basic scheme":                  "Basic " + testAdminKey,
		"key with a suffix":             right + "x",
		"key prefix":                    right[:len(right)-1],
		"key in upper case":             "Bearer " + strings.ToUpper(testAdminKey),
		"a client's API key":            "Bearer " + victimKey,
		"scheme only":                   "Bearer",
	}
	for _, r := range adminRoutes() {
		for name, auth := range refused {
			t.Run(r.method+" "+r.path+" "+name, func(t *testing.T) {
				resp, body := send(t, r.method, base+r.path, auth, r.body)
				assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
				assert.Equal(t, http.StatusUnauthorized, jsonCode(body), body)
				assert.True(t, strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer"))
			})
		}
	}
	// Nothing the refused requests tried happened.
	resp, body := send(t, "GET", base+"/clients", right, "")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.NotContains(t, body, `"created"`)
	assert.Contains(t, body, `"doomed"`)
	assert.Contains(t, body, `"capacity":100000`)
	code, _ := call(t, "GET", base+"/fwd", victimKey, "")
	assert.Equal(t, http.StatusOK, code, "the victim's key was not rotated")

	t.Run("probes are open", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/readyz"} {
			for _, method := range []string{"GET", "HEAD"} {
				for _, auth := range []string{"", "Bearer wrong", right} {
					resp, body := send(t, method, base+path, auth, "")
					assert.Equal(t, http.StatusOK, resp.StatusCode, "%s %s %q: %s", method, path, auth, body)
				}
			}
		}
	})
	t.Run("right key on every route", func(t *testing.T) {
		for _, r := range adminRoutes() {
			for _, auth := range []string{right, "bearer " + testAdminKey, "Bearer   " + testAdminKey} {
				resp, body := send(t, r.method, base+r.path, auth, r.body)
				if r.method == "POST" && r.path == "/clients" && auth != right {
					assert.Equal(t, http.StatusConflict, resp.StatusCode, body) // created already
					continue
				}
				if r.method == "DELETE" && auth != right {
					assert.Equal(t, http.StatusNotFound, resp.StatusCode, body) // deleted already
					continue
				}
				assert.Equal(t, r.ok, resp.StatusCode, "%s %s %q: %s", r.method, r.path, auth, body)
			}
		}
	})
	t.Run("unknown admin paths need the key before routing", func(t *testing.T) {
		resp, body := send(t, "GET", base+"/clients/victim/nowhere", "", "")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
		resp, body = send(t, "GET", base+"/clients/victim/nowhere", right, "")
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, body)
	})
	t.Run("the admin key is not an API key", func(t *testing.T) {
		resp, body := send(t, "GET", base+"/fwd", right, "")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
		assert.Equal(t, "invalid api key", jsonMessage(body))
	})
	assert.NotContains(t, in.logs.String(), testAdminKey, "the admin key is never logged")
	assert.Empty(t, in.logs.lines("admin_api_key is not set: the admin API answers loopback peers only"))
}

// TestAdminAuthKeyFromEnvironment: TOLLGATE_ADMIN_KEY sets the key when
// the file has none, and replaces the file's.
func TestAdminAuthKeyFromEnvironment(t *testing.T) {
	rec := newRecorder(t)
	cfg := baseConfig(t, rec.url)
	cfg["admin_api_key"] = "file-admin-key-0123456789"
	t.Setenv(config.EnvAdminKey, "env-admin-key-0123456789")
	in := start(t, cfg)
	resp, body := send(t, "GET", "http://"+in.addr+"/clients", "Bearer file-admin-key-0123456789", "")
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
	resp, body = send(t, "GET", "http://"+in.addr+"/clients", "Bearer env-admin-key-0123456789", "")
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
}

// TestAdminAuthLoopbackOnlyWithoutKey: with no admin key the admin API
// needs no credentials from loopback peers, refuses others with 403 (the
// probes excepted), and a warning says so at start. Peers other than
// loopback cannot connect in a test bound to 127.0.0.1, so those requests
// go straight to the handler the process serves, with a RemoteAddr set.
func TestAdminAuthLoopbackOnlyWithoutKey(t *testing.T) {
	rec := newRecorder(t)
	t.Setenv(config.EnvAdminKey, "")
	in := start(t, baseConfig(t, rec.url))
	warned := in.logs.lines("admin_api_key is not set: the admin API answers loopback peers only")
	require.Len(t, warned, 1, "the warning is logged once at start")
	assert.Equal(t, "WARN", warned[0]["level"])

	base := "http://" + in.addr
	createKey(t, in.addr, "", "victim")
	createKey(t, in.addr, "", "doomed")
	for _, r := range adminRoutes() {
		resp, body := send(t, r.method, base+r.path, "Bearer anything", r.body)
		assert.Equal(t, r.ok, resp.StatusCode, "loopback %s %s: %s", r.method, r.path, body)
	}

	h := wiredHandlers(t, baseConfig(t, rec.url))
	key := createKeyVia(t, h.main, "remote")
	peers := []string{"10.0.0.1:4444", "192.168.1.20:80", "[2001:db8::1]:4444", "[fe80::1%eth0]:1"}
	for _, peer := range peers {
		for _, r := range adminRoutes() {
			rr := serveAs(h.main, peer, r.method, r.path, "", r.body)
			assert.Equal(t, http.StatusForbidden, rr.Code, "%s %s %s: %s", peer, r.method, r.path, rr.Body)
			assert.Equal(t, http.StatusForbidden, jsonCode(rr.Body.String()))
		}
		// Headers a client controls do not make it local.
		rr := serveAs(h.main, peer, "GET", "/clients", "", "", "X-Forwarded-For", "127.0.0.1", "X-Real-Ip", "127.0.0.1")
		assert.Equal(t, http.StatusForbidden, rr.Code, "%s spoofing X-Forwarded-For", peer)
		rr = serveAs(h.main, peer, "GET", "http://127.0.0.1/clients", "", "")
		assert.Equal(t, http.StatusForbidden, rr.Code, "%s with a loopback Host", peer)
		for _, probe := range []string{"/healthz", "/readyz"} {
			rr := serveAs(h.main, peer, "GET", probe, "", "")
			assert.Equal(t, http.StatusOK, rr.Code, "%s %s: %s", peer, probe, rr.Body)
		}
		// Forwarding is for every peer with an API key.
		rr = serveAs(h.main, peer, "GET", "/fwd", "Bearer "+key, "")
		assert.Equal(t, http.StatusOK, rr.Code, "%s forwarding: %s", peer, rr.Body)
	}
	for _, peer := range []string{"127.0.0.1:1", "127.5.6.7:1", "[::1]:1", "[::ffff:127.0.0.1]:1"} {
		rr := serveAs(h.main, peer, "GET", "/clients", "", "")
		assert.Equal(t, http.StatusOK, rr.Code, "%s: %s", peer, rr.Body)
	}
}

// TestAdminAuthKeyAdmitsAnyPeer: with an admin key the peer's address
// does not matter, only the key.
func TestAdminAuthKeyAdmitsAnyPeer(t *testing.T) {
	rec := newRecorder(t)
	h := wiredHandlers(t, withAdminKey(t, baseConfig(t, rec.url), testAdminKey))
	for _, peer := range []string{"10.0.0.1:4444", "[2001:db8::1]:4444", "127.0.0.1:4444"} {
		rr := serveAs(h.main, peer, "GET", "/clients", "Bearer "+testAdminKey, "")
		assert.Equal(t, http.StatusOK, rr.Code, "%s: %s", peer, rr.Body)
		rr = serveAs(h.main, peer, "GET", "/clients", "", "")
		assert.Equal(t, http.StatusUnauthorized, rr.Code, "%s without the key: %s", peer, rr.Body)
	}
	assert.Empty(t, h.logs.lines("admin_api_key is not set: the admin API answers loopback peers only"))
}

// wired are the handlers a process serves, built the way run builds them
// and running, but reached without a socket.
type wired struct {
	main, admin http.Handler // admin is nil when it shares the main port
	logs        *logBuffer
}

func wiredHandlers(t *testing.T, cfg map[string]any, extraArgs ...string) wired {
	t.Helper()
	t.Setenv("DATABASE_URL", "")
	args := append([]string{"-config", writeConfig(t, cfg), "-addr", "127.0.0.1:0"}, extraArgs...)
	opts, err := parseFlags(args, io.Discard)
	require.NoError(t, err)
	c, err := config.Load(opts.configPath)
	require.NoError(t, err)
	logs := &logBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	store, err := openStore(ctx, c, log)
	require.NoError(t, err)
	a, err := assemble(ctx, c, store, log)
	require.NoError(t, err)
	servers, err := listen(c, opts, a, log)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- a.run(ctx, servers, c.ShutdownTimeout, log) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
		assert.NoError(t, store.Close())
	})
	w := wired{main: openapitest.SharedHandler(t, servers[0].srv.Handler), logs: logs}
	if len(servers) > 1 {
		w.main = servers[0].srv.Handler // forwards admin paths too
		w.admin = openapitest.Handler(t, servers[1].srv.Handler)
	}
	return w
}

// serveAs serves one request from peer on h. headerPairs are extra
// header names and values.
func serveAs(h http.Handler, peer, method, target, authorization, body string, headerPairs ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.RemoteAddr = peer
	if strings.HasPrefix(target, "/") {
		req.Host = "localhost" // as a local client names it, not httptest's example.com
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headerPairs); i += 2 {
		req.Header.Set(headerPairs[i], headerPairs[i+1])
	}
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, req.WithContext(ctx))
	return rr
}

// createKeyVia creates a client from loopback through h and returns its key.
func createKeyVia(t *testing.T, h http.Handler, id string) string {
	t.Helper()
	rr := serveAs(h, "127.0.0.1:1", "POST", "/clients", "", `{"client_id":"`+id+`"}`)
	require.Equal(t, http.StatusCreated, rr.Code, rr.Body.String())
	return jsonString(t, rr.Body.String(), "api_key")
}

// adminAddrOf waits for the admin server's "listening" line: start returns
// once the main server has logged its own.
func adminAddrOf(t *testing.T, in *instance) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range in.logs.lines("listening") {
			if l["server"] == "admin" {
				return l["addr"].(string)
			}
		}
		time.Sleep(10 * time.Millisecond) // polling the log; no event to wait on
	}
	t.Fatal("admin server did not log its address")
	return ""
}

// TestAdminPortSeparation: with the admin API on its own port, that port
// serves it under the same rules, and the main port forwards every path,
// admin paths included, like any other: API key required, the backend
// answers, the admin API never sees them.
func TestAdminPortSeparation(t *testing.T) {
	rec := newRecorder(t)
	in := start(t, withAdminKey(t, baseConfig(t, rec.url), testAdminKey), "-admin-addr", "127.0.0.1:0")
	adminBase := "http://" + adminAddrOf(t, in)
	mainBase := "http://" + in.addr
	right := "Bearer " + testAdminKey
	require.NotEqual(t, adminBase, mainBase)

	key := createKey(t, strings.TrimPrefix(adminBase, "http://"), testAdminKey, "victim")
	createKey(t, strings.TrimPrefix(adminBase, "http://"), testAdminKey, "doomed")
	t.Run("admin port", func(t *testing.T) {
		for _, r := range adminRoutes() {
			resp, body := send(t, r.method, adminBase+r.path, "", r.body)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s without key: %s", r.method, r.path, body)
		}
		for _, path := range []string{"/healthz", "/readyz"} {
			resp, body := send(t, "GET", adminBase+path, "", "")
			assert.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
		}
		resp, body := send(t, "GET", adminBase+"/fwd", right, "")
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, "the admin port does not forward: %s", body)
		assert.Empty(t, rec.paths())
	})

	t.Run("main port forwards admin paths", func(t *testing.T) {
		paths := []adminRoute{
			{"GET", "/clients", "", 0}, {"POST", "/clients", `{"client_id":"via-main"}`, 0},
			{"GET", "/clients/victim", "", 0}, {"DELETE", "/clients/victim", "", 0},
			{"POST", "/clients/victim/rotate-key", "", 0}, {"PATCH", "/clients", `{"client_id":"victim","capacity":1}`, 0},
			{"GET", "/backends", "", 0}, {"GET", "/healthz", "", 0}, {"GET", "/readyz", "", 0}, {"GET", "/metrics", "", 0},
		}
		for _, r := range paths {
			before := len(rec.seen())
			resp, body := sendForwarded(t, r.method, mainBase+r.path, "", r.body)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s without an API key: %s", r.method, r.path, body)
			assert.Equal(t, "missing api key", jsonMessage(body), "the pipeline's 401, not the admin API's")
			resp, body = sendForwarded(t, r.method, mainBase+r.path, right, r.body)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s with the admin key: %s", r.method, r.path, body)
			resp, body = sendForwarded(t, r.method, mainBase+r.path, "Bearer "+key, r.body)
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s %s with an API key: %s", r.method, r.path, body)
			assert.Equal(t, "ok", body, "the backend's answer")
			seen := rec.seen()[before:]
			require.Len(t, seen, 1)
			assert.Equal(t, r.method, seen[0].method)
			assert.Equal(t, r.path, seen[0].path)
			assert.Equal(t, r.body, seen[0].body)
			assert.Equal(t, "victim", seen[0].header.Get("X-Client-Id"))
			assert.Empty(t, seen[0].header.Get("Authorization"), "the API key is not passed on")
		}
		// None of it reached the admin API.
		resp, body := send(t, "GET", adminBase+"/clients/victim", right, "")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		assert.Equal(t, key, jsonString(t, body, "api_key"), "not rotated")
		assert.Contains(t, body, `"capacity":100000`, "not patched")
		resp, _ = send(t, "GET", adminBase+"/clients/via-main", right, "")
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, "not created")
	})
}

// TestAdminPortLoopbackOnlyWithoutKey: a separate admin port without an
// admin key answers loopback peers only; the main port forwards.
func TestAdminPortLoopbackOnlyWithoutKey(t *testing.T) {
	rec := newRecorder(t)
	t.Setenv(config.EnvAdminKey, "")
	h := wiredHandlers(t, baseConfig(t, rec.url), "-admin-addr", "127.0.0.1:0")
	require.NotNil(t, h.admin)
	key := createKeyVia(t, h.admin, "sep")
	rr := serveAs(h.admin, "10.0.0.1:1", "GET", "/clients", "", "")
	assert.Equal(t, http.StatusForbidden, rr.Code, rr.Body.String())
	rr = serveAs(h.admin, "10.0.0.1:1", "GET", "/healthz", "", "")
	assert.Equal(t, http.StatusOK, rr.Code, rr.Body.String())
	rr = serveAs(h.main, "10.0.0.1:1", "GET", "/clients", "Bearer "+key, "")
	assert.Equal(t, http.StatusOK, rr.Code, "main port forwards /clients: %s", rr.Body.String())
	assert.Equal(t, "ok", rr.Body.String())
	rr = serveAs(h.main, "127.0.0.1:1", "GET", "/clients", "", "")
	assert.Equal(t, http.StatusUnauthorized, rr.Code, "main port: even loopback needs an API key: %s", rr.Body.String())
	assert.Len(t, h.logs.lines("admin_api_key is not set: the admin API answers loopback peers only"), 1)
}
