package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/httpapi/openapi"
	"github.com/tollgate/tollgate/messages"
)

// fakeTraffic is a Traffic with fixed answers.
type fakeTraffic struct {
	rates             messages.TrafficRates
	admitted, refused []messages.TopClient
}

var _ Traffic = fakeTraffic{}

func (f fakeTraffic) Rates() messages.TrafficRates { return f.rates }
func (f fakeTraffic) Top(n int) (admitted, refused []messages.TopClient) {
	return f.admitted[:min(n, len(f.admitted))], f.refused[:min(n, len(f.refused))]
}

func withTraffic(tr Traffic) func(*Options) { return func(o *Options) { o.Traffic = tr } }

func TestTrafficRates(t *testing.T) {
	ta := newTestAdmin(t, false, withTraffic(fakeTraffic{rates: messages.TrafficRates{
		End:       testNow,
		Total:     []uint64{3, 5},
		Class2xx:  []uint64{2, 4},
		Class4xx:  []uint64{1, 1},
		Status429: []uint64{1, 0},
	}}))
	rec := ta.do(http.MethodGet, "/stats/traffic", "")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var got struct {
		StepSeconds int                 `json:"step_seconds"`
		End         string              `json:"end"`
		Series      map[string][]uint64 `json:"series"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
	assert.Equal(t, 1, got.StepSeconds)
	assert.Equal(t, "2025-03-04T05:06:07.89Z", got.End)
	assert.Equal(t, []uint64{3, 5}, got.Series["total"])
	assert.Equal(t, []uint64{1, 0}, got.Series["429"])
	assert.Equal(t, []uint64{}, got.Series["5xx"], "an empty series is [], not null")
}

func TestTopClients(t *testing.T) {
	many := make([]messages.TopClient, 20)
	for i := range many {
		many[i] = messages.TopClient{ClientID: fmt.Sprintf("c%02d", i), Count: uint64(100 - i)}
	}
	ta := newTestAdmin(t, false, withTraffic(fakeTraffic{
		admitted: many,
		refused:  []messages.TopClient{{ClientID: "greedy", Count: 7, Error: 2}},
	}))
	tests := []struct {
		name         string
		query        string
		wantAdmitted int
	}{
		{"default limit", "", 10},
		{"limit", "?limit=3", 3},
		{"largest limit", "?limit=100", 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := decodeMap(t, ta.do(http.MethodGet, "/stats/top-clients"+tt.query, ""))
			assert.Len(t, m["admitted"], tt.wantAdmitted)
			assert.Equal(t, []any{map[string]any{"client_id": "greedy", "count": 7.0, "error": 2.0}}, m["refused"])
			assert.Equal(t, 300.0, m["window_seconds"])
		})
	}
	for _, q := range []string{"?limit=0", "?limit=101", "?limit=x"} {
		t.Run("bad "+q, func(t *testing.T) {
			assertError(t, ta.do(http.MethodGet, "/stats/top-clients"+q, ""), 400, "limit")
		})
	}
}

func TestStatsWithoutTrafficAre404(t *testing.T) {
	ta := newTestAdmin(t, false)
	for _, p := range []string{"/stats/traffic", "/stats/top-clients"} {
		assertError(t, ta.do(http.MethodGet, p, ""), 404, "not enabled")
	}
}

func TestListClientsByPrefix(t *testing.T) {
	ta := newTestAdmin(t, false)
	for _, id := range []string{"al", "alice", "alice.2", "alicf", "alic", "bob", "ali-x", "alh"} {
		ta.mustCreate(t, `{"client_id":"`+id+`"}`)
	}
	tests := []struct {
		name     string
		query    string
		wantIDs  []string
		wantNext string
	}{
		{"prefix", "prefix=alic", []string{"alic", "alice", "alice.2", "alicf"}, ""},
		{"prefix is itself an id", "prefix=al", []string{"al", "alh", "ali-x", "alic", "alice", "alice.2", "alicf"}, ""},
		{"paged", "prefix=alic&limit=2", []string{"alic", "alice"}, "alice"},
		{"next page", "prefix=alic&limit=2&after=alice", []string{"alice.2", "alicf"}, "alicf"},
		{"last page", "prefix=alic&limit=2&after=alicf", []string{}, ""},
		{"page cut by the prefix", "prefix=ali&limit=5&after=alice.2", []string{"alicf"}, ""},
		{"nothing", "prefix=zed", []string{}, ""},
		{"dash prefix", "prefix=ali-", []string{"ali-x"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := ta.do(http.MethodGet, "/clients?"+tt.query, "")
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
			var got clientListJSON
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
			ids := []string{}
			for _, c := range got.Clients {
				ids = append(ids, c.ClientID)
			}
			assert.Equal(t, tt.wantIDs, ids)
			assert.Equal(t, tt.wantNext, got.Next)
		})
	}
	assertError(t, ta.do(http.MethodGet, "/clients?prefix=a%20b", ""), 400, "prefix")
}

func TestDashboardFiles(t *testing.T) {
	ta := newTestAdmin(t, false)
	tests := []struct {
		path, ctype, contains string
	}{
		{"/ui/", "text/html; charset=utf-8", `<script src="app.js"`},
		{"/ui/index.html", "text/html; charset=utf-8", "<title>Tollgate</title>"},
		{"/ui/app.js", "text/javascript; charset=utf-8", "sessionStorage"},
		{"/ui/app.css", "text/css; charset=utf-8", "--accent"},
		{"/", "text/html; charset=utf-8", `href="/ui/"`},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			rec := ta.do(http.MethodGet, tt.path, "")
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
			assert.Equal(t, tt.ctype, rec.Header().Get("Content-Type"))
			assert.Contains(t, rec.Body.String(), tt.contains)
			csp := rec.Header().Get("Content-Security-Policy")
			assert.Contains(t, csp, "script-src 'self'")
			assert.NotContains(t, csp, "unsafe-inline")
			assert.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
		})
	}
	rec := ta.do(http.MethodGet, "/ui", "")
	assert.Equal(t, http.StatusMovedPermanently, rec.Code)
	assert.Equal(t, "/ui/", rec.Header().Get("Location"))
	for _, p := range []string{"/ui/nothing.js", "/ui/../admin.go", "/ui/ui/app.js"} {
		assertError(t, ta.do(http.MethodGet, p, ""), 404, "not found")
	}
}

func TestDashboardHasNoInlineScript(t *testing.T) {
	page := newTestAdmin(t, false).do(http.MethodGet, "/ui/", "").Body.String()
	assert.NotRegexp(t, `<script>|<script [^>]*>[^<]|\son[a-z]+=|style=`, page,
		"the CSP allows no inline script or style")
}

// TestStaticFilesNeedNoKeyButDataDoes: with an admin key, the page and its
// files load without it (they hold no data); every data path, the API
// description included, needs it.
func TestStaticFilesNeedNoKeyButDataDoes(t *testing.T) {
	const key = "admin-key-0123456789"
	admin := newTestAdmin(t, false, func(o *Options) { o.AdminKey = key }, withTraffic(fakeTraffic{}))
	for _, p := range []string{"/", "/ui", "/ui/", "/ui/app.js", "/ui/app.css"} {
		rec := admin.do(http.MethodGet, p, "")
		assert.Less(t, rec.Code, 400, "%s: %s", p, rec.Body.String())
	}
	for _, p := range []string{"/openapi.json", "/stats/traffic", "/stats/top-clients", "/clients", "/backends"} {
		assertError(t, admin.do(http.MethodGet, p, ""), 401, "admin key required")
		r := newRequest(http.MethodGet, p, "")
		r.Header.Set("Authorization", "Bearer "+key)
		rec := serve(admin.handler, r)
		assert.Equal(t, http.StatusOK, rec.Code, "%s: %s", p, rec.Body.String())
	}
}

func TestOpenAPIServed(t *testing.T) {
	rec := newTestAdmin(t, false).do(http.MethodGet, "/openapi.json", "")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	assert.Equal(t, openapi.JSON, rec.Body.Bytes())
	var doc struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc))
	assert.True(t, strings.HasPrefix(doc.OpenAPI, "3.1."), doc.OpenAPI)
	for _, p := range []string{"/clients", "/clients/{client_id}", "/clients/{client_id}/rotate-key",
		"/backends", "/healthz", "/readyz", "/metrics", "/stats/traffic", "/stats/top-clients", "/openapi.json", "/ui/"} {
		assert.Contains(t, doc.Paths, p)
	}
}

// TestSignInKeyIsNotSaved: the admin key field is not a password the
// browser offers to store (SPEC 11: the key stays in sessionStorage).
func TestSignInKeyIsNotSaved(t *testing.T) {
	page := newTestAdmin(t, false).do(http.MethodGet, "/ui/", "").Body.String()
	field := regexp.MustCompile(`<input id="admin-key"[^>]*>`).FindString(page)
	require.NotEmpty(t, field)
	assert.Contains(t, field, `autocomplete="off"`)
	assert.Contains(t, field, `autocapitalize="off"`)
	assert.NotContains(t, field, "current-password")
}
