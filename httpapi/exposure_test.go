package httpapi

import (
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Without an admin key, a browser on the operator's machine is a loopback
// peer: DNS rebinding and cross-site requests must still be refused
// (SPEC 4, issue 12 item 11).
func TestLoopbackModeRefusesForeignHostsAndOrigins(t *testing.T) {
	tests := []struct {
		name, host, origin string
		status             int
		msg                string
	}{
		{name: "localhost", host: "localhost:8080", status: 200},
		{name: "LOCALHOST no port", host: "LOCALHOST", status: 200},
		{name: "127.0.0.1", host: "127.0.0.1:8080", status: 200},
		{name: "127.5.6.7", host: "127.5.6.7", status: 200},
		{name: "[::1] with port", host: "[::1]:8080", status: 200},
		{name: "[::1]", host: "[::1]", status: 200},
		{name: "loopback origin", host: "localhost:8080", origin: "http://localhost:8080", status: 200},
		{name: "loopback origin other port", host: "127.0.0.1:8080", origin: "https://127.0.0.1:3000", status: 200},
		{name: "ipv6 loopback origin", host: "[::1]:8080", origin: "http://[::1]:8080", status: 200},
		{name: "rebound domain", host: "attacker.example:8080", status: 403, msg: "not a loopback name"},
		{name: "localhost as subdomain", host: "localhost.attacker.example", status: 403, msg: "not a loopback name"},
		{name: "empty host", host: "", status: 403, msg: "not a loopback name"},
		{name: "private address", host: "10.0.0.1:8080", status: 403, msg: "not a loopback name"},
		{name: "unspecified address", host: "0.0.0.0:8080", status: 403, msg: "not a loopback name"},
		{name: "cross-site origin", host: "localhost:8080", origin: "https://attacker.example", status: 403, msg: "not a loopback origin"},
		{name: "null origin", host: "localhost:8080", origin: "null", status: 403, msg: "not a loopback origin"},
		{name: "origin with a path", host: "localhost:8080", origin: "http://localhost/x", status: 403, msg: "not a loopback origin"},
		{name: "file origin", host: "localhost:8080", origin: "file://", status: 403, msg: "not a loopback origin"},
	}
	ta := newTestAdmin(t, false)
	for i, tt := range tests {
		for _, m := range []struct{ method, path, body string }{
			{http.MethodGet, "/clients", ""},
			{http.MethodPost, "/clients", `{"client_id":"c` + strconv.Itoa(i) + `"}`},
			{http.MethodPost, "/clients/nobody/rotate-key", ""},
		} {
			t.Run(tt.name+" "+m.method+" "+m.path, func(t *testing.T) {
				r := newRequest(m.method, m.path, m.body)
				r.Host = tt.host
				if tt.origin != "" {
					r.Header.Set("Origin", tt.origin)
				}
				rec := serve(ta.handler, r)
				if tt.status == 200 {
					assert.NotEqual(t, http.StatusForbidden, rec.Code, rec.Body.String())
					return
				}
				assertError(t, rec, tt.status, tt.msg)
			})
		}
	}
	for i, tt := range tests {
		_, err := ta.clients.GetClient(t.Context(), "c"+strconv.Itoa(i))
		assert.Equal(t, tt.status == 200, err == nil, "%s: created only when allowed", tt.name)
	}
}

func TestProbesIgnoreHostAndOrigin(t *testing.T) {
	ta := newTestAdmin(t, false)
	r := newRequest(http.MethodGet, "/healthz", "")
	r.Host = "attacker.example"
	r.Header.Set("Origin", "https://attacker.example")
	assert.Equal(t, http.StatusOK, serve(ta.handler, r).Code)
}

// A request with a body needs Content-Type: application/json in every mode
// (a Blob sent cross-site carries none and needs no preflight); requests
// without a body need none.
func TestBodiesNeedJSONContentType(t *testing.T) {
	for _, mode := range []struct {
		name string
		key  string
	}{{"loopback", ""}, {"admin key", testAdminKey}} {
		t.Run(mode.name, func(t *testing.T) {
			ta := newTestAdmin(t, false, func(o *Options) { o.AdminKey = mode.key })
			send := func(method, path, body, ct string) int {
				r := newRequest(method, path, body)
				r.Header.Del("Content-Type")
				if ct != "" {
					r.Header.Set("Content-Type", ct)
				}
				if mode.key != "" {
					r.Header.Set("Authorization", "Bearer "+mode.key)
				}
				rec := serve(ta.handler, r)
				if rec.Code == http.StatusUnsupportedMediaType {
					assertError(t, rec, 415, "application/json")
				}
				return rec.Code
			}
			assert.Equal(t, 415, send(http.MethodPost, "/clients", `{"client_id":"blob"}`, ""), "a Blob without type")
			assert.Equal(t, 415, send(http.MethodPost, "/clients", `{"client_id":"txt"}`, "text/plain"))
			assert.Equal(t, 415, send(http.MethodPatch, "/clients/blob", `{"capacity":3}`, ""))
			assert.Equal(t, 415, send(http.MethodPost, "/clients/blob/rotate-key", `{}`, ""), "rotate-key with a body")
			assert.Equal(t, 201, send(http.MethodPost, "/clients", `{"client_id":"ok"}`, "application/json"))
			assert.Equal(t, 200, send(http.MethodPost, "/clients/ok/rotate-key", "", ""), "no body, no type needed")
			assert.Equal(t, 204, send(http.MethodDelete, "/clients/ok", "", ""))
			_, err := ta.clients.GetClient(t.Context(), "blob")
			assert.Error(t, err, "nothing was created")
		})
	}
}
