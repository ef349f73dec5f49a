package main

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOperatorSurfacesWhereSPEC11PutsThem: on a shared port /ui/ and
// /openapi.json are admin paths and / is forwarded; a separate admin port
// answers / with a page linking the dashboard.
func TestOperatorSurfacesWhereSPEC11PutsThem(t *testing.T) {
	t.Setenv("TOLLGATE_ADMIN_KEY", "")
	backend := newLiveBackend(t)

	t.Run("shared port", func(t *testing.T) {
		in := start(t, baseConfig(t, backend.url))
		base := "http://" + in.addr
		for _, p := range []string{"/ui/", "/ui/app.js", "/openapi.json", "/stats/traffic", "/stats/top-clients"} {
			resp, body := send(t, http.MethodGet, base+p, "", "")
			assert.Equal(t, http.StatusOK, resp.StatusCode, "%s: %.200s", p, body)
		}
		resp, body := sendForwarded(t, http.MethodGet, base+"/", "", "")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "/ is forwarded: %s", body)
	})

	t.Run("separate admin port", func(t *testing.T) {
		in := start(t, baseConfig(t, backend.url), "-admin-addr", "127.0.0.1:0")
		admin := "http://" + in.admin(t).addr
		resp, body := send(t, http.MethodGet, admin+"/", "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		assert.Contains(t, body, `href="/ui/"`)
		assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'")
		resp, body = send(t, http.MethodGet, admin+"/ui/", "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		assert.Contains(t, body, "<title>Tollgate</title>")
	})
}
