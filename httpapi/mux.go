package httpapi

import (
	"net/http"
	"strings"
)

// NewMain returns the main port's handler when the admin API shares it
// (admin_port 0): admin paths go to admin, every other path to forward.
// The split is a few string comparisons, so proxied requests pay no router
// work. Admin paths are exactly /clients, /backends, /healthz, /readyz,
// /metrics and everything under /clients/; anything else, /backends/x or
// /Clients included, is forwarded. With admin_port set, the main port
// serves forward alone and this is not used.
func NewMain(admin, forward http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isAdminPath(r.URL.Path) {
			admin.ServeHTTP(w, r)
			return
		}
		forward.ServeHTTP(w, r)
	})
}

// isAdminPath reports whether the admin API owns path on a shared port.
func isAdminPath(path string) bool {
	switch path {
	case "/clients", "/backends", "/healthz", "/readyz", "/metrics":
		return true
	}
	return strings.HasPrefix(path, "/clients/")
}
