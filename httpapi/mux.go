package httpapi

import (
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/tollgate/tollgate/httpapi/openapi"
)

// NewMain returns the main port's handler when the admin API shares it
// (admin_port 0): admin paths go to admin, every other path to forward.
// The split is a few string comparisons (openapi.IsAdminPath), so proxied
// requests pay no router work. With admin_port set, the main port serves
// forward alone and this is not used.
//
// extraPrefixes are further path prefixes the admin API owns, such as
// PprofPrefix when profiling is on.
func NewMain(admin, forward http.Handler, extraPrefixes ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isAdminPath(r.URL.Path) || hasAnyPrefix(r.URL.Path, extraPrefixes) {
			admin.ServeHTTP(w, r)
			return
		}
		forward.ServeHTTP(w, r)
	})
}

// isAdminPath reports whether the admin API owns path on a shared port.
// The rule lives beside the description, where the openapitest checker
// reads it too.
func isAdminPath(path string) bool { return openapi.IsAdminPath(path) }

func hasAnyPrefix(path string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

// PprofPrefix is where Options.Pprof serves the runtime profiles.
const PprofPrefix = "/debug/pprof/"

// pprofHandler serves net/http/pprof's pages. They are mounted explicitly:
// importing the package also registers them on http.DefaultServeMux, which
// Tollgate never serves.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(PprofPrefix, pprof.Index)
	mux.HandleFunc(PprofPrefix+"cmdline", pprof.Cmdline)
	mux.HandleFunc(PprofPrefix+"profile", pprof.Profile)
	mux.HandleFunc(PprofPrefix+"symbol", pprof.Symbol)
	mux.HandleFunc(PprofPrefix+"trace", pprof.Trace)
	return mux
}
