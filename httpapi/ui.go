package httpapi

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"

	"github.com/julienschmidt/httprouter"
	"github.com/tollgate/tollgate/httpapi/openapi"
)

// uiFiles is the dashboard (SPEC 11): static files, no build step. They
// hold no data, so they load without the admin key; every data request
// the page makes carries it.
//
//go:embed ui
var uiFiles embed.FS

// UIPrefix is where the dashboard is served.
const UIPrefix = "/ui/"

// uiPolicy is the dashboard's Content-Security-Policy: its own script and
// style sheet only, no inline code, data fetched from this origin alone,
// never framed.
const uiPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; " +
	"frame-ancestors 'none'"

// routeSurfaces adds the operator surfaces of SPEC 11 to r.
func (a *admin) routeSurfaces(r *httprouter.Router) {
	r.GET("/stats/traffic", a.handle(a.trafficRates))
	r.GET("/stats/top-clients", a.handle(a.topClients))
	r.GET("/openapi.json", a.handle(serveOpenAPI))
	r.GET("/", a.handle(serveIndex))
	r.GET("/ui", a.handle(func(w http.ResponseWriter, req *http.Request, _ httprouter.Params) error {
		http.Redirect(w, req, UIPrefix, http.StatusMovedPermanently)
		return nil
	}))
	r.GET(UIPrefix+"*file", a.handle(serveUI))
}

// isStatic reports whether path is a dashboard file or the index page,
// which load without the admin key.
func isStatic(p string) bool {
	return p == "/" || p == "/ui" || strings.HasPrefix(p, UIPrefix)
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) error {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	_, _ = w.Write(openapi.JSON)
	return nil
}

// indexPage is GET / of a separate admin port: where to go from here.
const indexPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tollgate admin</title></head>
<body><h1>Tollgate admin</h1>
<ul><li><a href="/ui/">Dashboard</a></li>
<li><a href="/openapi.json">API description (OpenAPI 3.1)</a></li></ul>
</body></html>
`

func serveIndex(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) error {
	writeStatic(w, "text/html; charset=utf-8", []byte(indexPage))
	return nil
}

// uiTypes are the dashboard's file types, fixed here: mime.TypeByExtension
// reads the system's tables, which differ between machines.
var uiTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

func serveUI(w http.ResponseWriter, _ *http.Request, ps httprouter.Params) error {
	name := strings.TrimPrefix(ps.ByName("file"), "/")
	if name == "" {
		name = "index.html"
	}
	data, err := fs.ReadFile(uiFiles, "ui/"+name)
	if err != nil || !fs.ValidPath(name) {
		return &requestError{kind: errRouteNotFound, msg: "not found"}
	}
	ctype, ok := uiTypes[path.Ext(name)]
	if !ok {
		ctype = "application/octet-stream"
	}
	writeStatic(w, ctype, data)
	return nil
}

// writeStatic answers with a page or file of the dashboard. no-cache makes
// browsers revalidate, so an upgraded Tollgate serves its new page.
func writeStatic(w http.ResponseWriter, ctype string, data []byte) {
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Security-Policy", uiPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	_, _ = w.Write(data)
}
