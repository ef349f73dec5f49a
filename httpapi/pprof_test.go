package httpapi

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestPprofIsOptInAndBehindAdminAuth(t *testing.T) {
	off := newTestAdmin(t, false)
	assert.Equal(t, http.StatusNotFound, off.do(http.MethodGet, "/debug/pprof/", "").Code, "off by default")

	on := newTestAdmin(t, false, func(o *Options) { o.Pprof = true; o.AdminKey = "admin-key-0123456789" })
	assert.Equal(t, http.StatusUnauthorized, on.do(http.MethodGet, "/debug/pprof/", "").Code)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
		r := newRequest(http.MethodGet, path, "")
		r.Header.Set("Authorization", "Bearer admin-key-0123456789")
		assert.Equal(t, http.StatusOK, serve(on.handler, r).Code, path)
	}

	forward := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	shared := NewMain(on.handler, forward, PprofPrefix)
	assert.Equal(t, http.StatusUnauthorized, serve(shared, newRequest(http.MethodGet, "/debug/pprof/heap", "")).Code)
	assert.Equal(t, http.StatusTeapot, serve(NewMain(off.handler, forward), newRequest(http.MethodGet, "/debug/pprof/heap", "")).Code,
		"without pprof the path is proxied like any other")
}
