package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tollgate/tollgate/messages"
)

const testAdminKey = "s3cret-admin-key"

func TestAdminKey(t *testing.T) {
	tests := []struct {
		name, path, auth string
		status           int
		msg              string
	}{
		{"right key", "/clients", "Bearer " + testAdminKey, 200, ""},
		{"scheme is case-insensitive", "/clients", "bearer " + testAdminKey, 200, ""},
		{"missing", "/clients", "", 401, "admin key required"},
		{"wrong key", "/clients", "Bearer nope", 401, "invalid admin key"},
		{"key prefix", "/clients", "Bearer " + testAdminKey[:5], 401, "invalid admin key"},
		{"key with suffix", "/clients", "Bearer " + testAdminKey + "x", 401, "invalid admin key"},
		{"no scheme", "/clients", testAdminKey, 401, "admin key required"},
		{"basic scheme", "/clients", "Basic " + testAdminKey, 401, "admin key required"},
		{"empty token", "/clients", "Bearer ", 401, "admin key required"},
		{"backends need it", "/backends", "", 401, "admin key required"},
		{"metrics need it", "/metrics", "", 401, "admin key required"},
		{"unknown paths need it", "/nowhere", "", 401, "admin key required"},
		{"healthz is open", "/healthz", "", 200, ""},
		{"readyz is open", "/readyz", "", 200, ""},
	}
	ta := newTestAdmin(t, false, func(o *Options) { o.AdminKey = testAdminKey })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRequest(http.MethodGet, tt.path, "")
			r.RemoteAddr = "10.0.0.1:1234" // with a key, peers need not be local
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			rec := serve(ta.handler, r)
			if tt.status == http.StatusOK {
				assert.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
				return
			}
			assertError(t, rec, tt.status, tt.msg)
			assert.Equal(t, `Bearer realm="tollgate admin"`, rec.Header().Get("WWW-Authenticate"))
			assert.NotContains(t, rec.Body.String(), testAdminKey)
		})
	}
	assert.NotContains(t, ta.logs.String(), testAdminKey, "the admin key is never logged")
}

func TestLoopbackOnlyWithoutAdminKey(t *testing.T) {
	tests := []struct {
		remote, path string
		status       int
	}{
		{"127.0.0.1:1234", "/clients", 200},
		{"127.9.8.7:1234", "/clients", 200},
		{"[::1]:1234", "/clients", 200},
		{"[::ffff:127.0.0.1]:1234", "/clients", 200},
		{"127.0.0.1", "/clients", 200},
		{"10.0.0.1:1234", "/clients", 403},
		{"192.168.1.5:80", "/backends", 403},
		{"[2001:db8::1]:1234", "/metrics", 403},
		{"[fe80::1%eth0]:1234", "/clients", 403},
		{"localhost:1234", "/clients", 403},
		{"", "/clients", 403},
		{"10.0.0.1:1234", "/nowhere", 403},
		{"10.0.0.1:1234", "/healthz", 200},
		{"10.0.0.1:1234", "/readyz", 200},
	}
	ta := newTestAdmin(t, false)
	for _, tt := range tests {
		t.Run(tt.remote+tt.path, func(t *testing.T) {
			r := newRequest(http.MethodGet, tt.path, "")
			r.RemoteAddr = tt.remote
			r.Header.Set("Authorization", "Bearer anything") // no key set: ignored
			rec := serve(ta.handler, r)
			if tt.status == http.StatusOK {
				assert.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
				return
			}
			assertError(t, rec, tt.status, "only loopback peers")
		})
	}
}

func TestStoreErrors(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		msg    string
	}{
		{"unavailable", fmt.Errorf("actors: %w: dial tcp 10.1.1.1:5432", messages.ErrUnavailable), 503, "store unavailable"},
		{"stopped", fmt.Errorf("actors: %w", messages.ErrStopped), 503, "shutting down"},
		{"deadline", fmt.Errorf("persist: %w", context.DeadlineExceeded), 503, "timed out"},
		{"unexpected", errors.New("persist: scan row: boom at 10.1.1.1"), 500, "internal error"},
		{"conflict naming nothing", fmt.Errorf("persist: %w", messages.ErrConflict), 409, "already exists or its api_key is in use"},
		{"conflict on key hash", fmt.Errorf("persist: key_hash taken: %w", messages.ErrConflict), 409, "api_key is already in use"},
		{"postgres primary key", fmt.Errorf(`persist: unique "clients_pkey": %w`, messages.ErrConflict), 409, "already exists"},
	}
	// Only writes that take a key or an id can conflict; the OpenAPI
	// description lists 409 for those alone.
	canConflict := map[string]bool{"POST /clients": true, "POST /clients/alice/rotate-key": true}
	requests := []struct{ method, path, body string }{
		{http.MethodPost, "/clients", `{"client_id":"alice"}`},
		{http.MethodGet, "/clients/alice", ""},
		{http.MethodGet, "/clients", ""},
		{http.MethodPatch, "/clients/alice", `{"capacity":3}`},
		{http.MethodPatch, "/clients", `{"client_id":"alice","capacity":3}`},
		{http.MethodDelete, "/clients/alice", ""},
		{http.MethodPost, "/clients/alice/rotate-key", ""},
	}
	for _, tt := range tests {
		for _, req := range requests {
			if tt.status == http.StatusConflict && !canConflict[req.method+" "+req.path] {
				continue
			}
			t.Run(tt.name+" "+req.method+" "+req.path, func(t *testing.T) {
				ta := newTestAdmin(t, false, func(o *Options) { o.Clients = failingClients(tt.err) })
				rec := ta.do(req.method, req.path, req.body)
				assertError(t, rec, tt.status, tt.msg)
				assert.NotContains(t, rec.Body.String(), "10.1.1.1", "store details stay in the log")
			})
		}
	}
}

func TestPanicBecomes500(t *testing.T) {
	ta := newTestAdmin(t, false, func(o *Options) { o.Clients = clientsFuncs{} }) // nil funcs panic
	rec := ta.do(http.MethodGet, "/clients/alice", "")
	assertError(t, rec, http.StatusInternalServerError, "internal error")
	assert.Contains(t, ta.logs.String(), "admin handler panicked")
}

func TestPanicAfterHeaderIsOnlyLogged(t *testing.T) {
	ta := newTestAdmin(t, false, func(o *Options) {
		o.Metrics = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusOK)
			panic("half-written")
		})
	})
	rec := ta.do(http.MethodGet, "/metrics", "")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Empty(t, rec.Body.String())
	assert.Contains(t, ta.logs.String(), "half-written")
}

func TestAbortHandlerPanicPassesThrough(t *testing.T) {
	ta := newTestAdmin(t, false, func(o *Options) {
		o.Metrics = http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
	})
	assert.PanicsWithValue(t, http.ErrAbortHandler, func() { ta.do(http.MethodGet, "/metrics", "") })
}

func TestKeysNeverLogged(t *testing.T) {
	const key = "given-key-0123456789"
	ta := newTestAdmin(t, false)
	created := ta.mustCreate(t, `{"client_id":"alice","api_key":"`+key+`"}`)
	ta.do(http.MethodPost, "/clients", `{"client_id":"bob","api_key":"`+key+`"}`)   // 409
	ta.do(http.MethodPost, "/clients", `{"client_id":"bob","api_key":"`+key+` x"}`) // 400
	rotated := decodeMap(t, ta.do(http.MethodPost, "/clients/alice/rotate-key", ""))
	ta.do(http.MethodPatch, "/clients/alice", `{"capacity":2}`)
	ta.do(http.MethodDelete, "/clients/alice", "")

	logs := ta.logs.String()
	require.Contains(t, logs, "client created", "writes are logged")
	require.Contains(t, logs, "admin request failed", "failures are logged")
	for _, k := range []string{key, created["api_key"].(string), rotated["api_key"].(string)} {
		assert.NotContains(t, logs, k)
		assert.NotContains(t, logs, k[:messages.KeyPrefixLen])
	}
}

func TestNewAdminNeedsDependencies(t *testing.T) {
	assert.Panics(t, func() { NewAdmin(Options{}) })
	assert.Panics(t, func() {
		NewAdmin(Options{Clients: newMemClients(false), Backends: staticBackends()})
	})
}

func TestHealthz(t *testing.T) {
	ta := newTestAdmin(t, false, func(o *Options) { o.Clients = failingClients(messages.ErrUnavailable) })
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		rec := ta.do(method, "/healthz", "")
		require.Equal(t, http.StatusOK, rec.Code, "alive even when the store is down")
		if method == http.MethodGet {
			assert.JSONEq(t, `{"status":"ok"}`, rec.Body.String())
		}
	}
}

func TestReadyz(t *testing.T) {
	healthy := messages.BackendStatus{URL: "http://127.0.0.1:8081", Healthy: true}
	sick := messages.BackendStatus{URL: "http://127.0.0.1:8082"}
	tests := []struct {
		name      string
		storeDown bool
		backends  []messages.BackendStatus
		status    int
		body      string
	}{
		{"ready", false, []messages.BackendStatus{healthy, sick}, 200,
			`{"status":"ready","checks":{"store":"ok","backends":"ok"}}`},
		{"store unreachable", true, []messages.BackendStatus{healthy}, 503,
			`{"code":503,"message":"not ready: store unreachable","status":"not ready",
			  "checks":{"store":"unreachable","backends":"ok"}}`},
		{"no healthy backend", false, []messages.BackendStatus{sick}, 503,
			`{"code":503,"message":"not ready: no healthy backend","status":"not ready",
			  "checks":{"store":"ok","backends":"no healthy backend"}}`},
		{"both", true, nil, 503,
			`{"code":503,"message":"not ready: store unreachable; no healthy backend","status":"not ready",
			  "checks":{"store":"unreachable","backends":"no healthy backend"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAdmin(t, false, func(o *Options) { o.Backends = staticBackends(tt.backends...) })
			ta.clients.setDown(tt.storeDown)
			rec := ta.do(http.MethodGet, "/readyz", "")
			assert.Equal(t, tt.status, rec.Code)
			assert.JSONEq(t, tt.body, rec.Body.String())
		})
	}
}

func TestReadyzBoundsTheStoreCheck(t *testing.T) {
	ta := newTestAdmin(t, false, func(o *Options) {
		c := failingClients(nil)
		c.ready = func(ctx context.Context) error {
			_, ok := ctx.Deadline()
			require.True(t, ok, "the store check has a deadline")
			return nil
		}
		o.Clients = c
	})
	assert.Equal(t, http.StatusOK, ta.do(http.MethodGet, "/readyz", "").Code)
}

func TestMetrics(t *testing.T) {
	ta := newTestAdmin(t, false)
	assertError(t, ta.do(http.MethodGet, "/metrics", ""), 404, "metrics are not enabled")

	ta = newTestAdmin(t, false, func(o *Options) {
		o.Metrics = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			fmt.Fprintln(w, "tollgate_up 1")
		})
	})
	rec := ta.do(http.MethodGet, "/metrics", "")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "tollgate_up 1\n", rec.Body.String())
}

func TestBackends(t *testing.T) {
	checked := testNow.Add(-3e9)
	ta := newTestAdmin(t, false, func(o *Options) {
		o.Backends = staticBackends(
			messages.BackendStatus{URL: "http://127.0.0.1:8081", Healthy: true},
			messages.BackendStatus{
				URL: "http://127.0.0.1:8082", LastCheck: checked, LastError: "connection refused",
				LastStatus: 0, LastLatency: 1234567, ConsecutiveFailures: 3, Since: testNow,
				Weight: 3, EjectedUntil: testNow.Add(30e9), EjectedReason: "5 failed answers in a row", Ejections: 1,
			},
		)
	})
	rec := ta.do(http.MethodGet, "/backends", "")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.JSONEq(t, `{"backends":[
		{"url":"http://127.0.0.1:8081","healthy":true,"last_check":null,"last_error":"","last_status":0,
		 "last_latency_ms":0,"consecutive_failures":0,"consecutive_successes":0,"since":null,
		 "weight":1,"ejected_until":null,"ejection_reason":"","ejections":0},
		{"url":"http://127.0.0.1:8082","healthy":false,"last_check":"2025-03-04T05:06:04.89Z",
		 "last_error":"connection refused","last_status":0,"last_latency_ms":1.235,
		 "consecutive_failures":3,"consecutive_successes":0,"since":"2025-03-04T05:06:07.89Z",
		 "weight":3,"ejected_until":"2025-03-04T05:06:37.89Z","ejection_reason":"5 failed answers in a row","ejections":1}]}`,
		rec.Body.String())

	ta = newTestAdmin(t, false, func(o *Options) {
		o.Backends = backendsFuncs{statuses: func(context.Context) ([]messages.BackendStatus, error) {
			return nil, fmt.Errorf("actors: registry: %w", messages.ErrStopped)
		}}
	})
	assertError(t, ta.do(http.MethodGet, "/backends", ""), 503, "shutting down")
}

func TestDefaultsAreReadPerRequest(t *testing.T) {
	rate, capacity := 1.0, int64(2)
	ta := newTestAdmin(t, false, func(o *Options) {
		o.Defaults = func() (float64, int64) { return rate, capacity }
	})
	c := ta.mustCreate(t, `{"client_id":"a"}`)
	assert.Equal(t, 1.0, c["rate_per_sec"])
	rate, capacity = 3, 4 // a config reload
	c = ta.mustCreate(t, `{"client_id":"b"}`)
	assert.Equal(t, 3.0, c["rate_per_sec"])
	assert.Equal(t, 4.0, c["capacity"])
}

func TestErrorMessagesStayShort(t *testing.T) {
	ta := newTestAdmin(t, false)
	long := strings.Repeat("z", 10_000)
	rec := ta.do(http.MethodPost, "/clients", `{"`+long+`":1}`)
	assertError(t, rec, 400, "unknown field")
	assert.Less(t, rec.Body.Len(), 200)
}
