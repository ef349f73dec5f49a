// Package openapi holds the OpenAPI 3.1 description of Tollgate's admin
// API (openapi.json beside this file). httpapi serves it at
// GET /openapi.json and package openapitest checks every admin test's
// requests and answers against it, so the description and the code cannot
// drift apart. Beside it is the one rule that says which paths are the
// admin API's on a port shared with forwarded traffic, so the router and
// the checker cannot disagree on it. It imports nothing of ours.
package openapi

import (
	_ "embed" // for JSON
	"strings"
)

// JSON is the description, as served.
//
//go:embed openapi.json
var JSON []byte

// IsAdminPath reports whether the admin API owns path on a port it shares
// with forwarded traffic (admin_port 0): exactly /clients, /backends,
// /healthz, /readyz, /metrics, /openapi.json, /ui and everything under
// /clients/, /stats/ and /ui/ (SPEC 11). Anything else, / and /backends/x
// or /Clients included, is forwarded. The description's paths other than /
// are all admin paths.
func IsAdminPath(path string) bool {
	switch path {
	case "/clients", "/backends", "/healthz", "/readyz", "/metrics", "/openapi.json", "/ui":
		return true
	}
	return strings.HasPrefix(path, "/clients/") || strings.HasPrefix(path, "/stats/") ||
		strings.HasPrefix(path, "/ui/")
}
