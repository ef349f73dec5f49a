package openapitest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tollgate/tollgate/httpapi/openapi"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a testing.TB that keeps what Errorf reports instead of
// failing, so a test can check that the checker catches a mismatch.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recorder) Helper() {}

func (r *recorder) reported() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errors
}

const goodClient = `{"client_id":"a","api_key":"k","rate_per_sec":5,"capacity":20,"tokens":20,"last_refill":"2026-01-02T03:04:05Z"}`

// answering is a handler that answers every request with status and body.
func answering(status int, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	})
}

// withLocation sets a Location header before h answers.
func withLocation(loc string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", loc)
		h.ServeHTTP(w, r)
	})
}

func TestDescriptionIsValidOpenAPI31(t *testing.T) {
	doc := Load(t)
	assert.True(t, doc.IsOpenAPI31OrLater())
}

func TestHandlerCatchesWhatDrifts(t *testing.T) {
	tests := []struct {
		name        string
		method      string
		path        string
		body        string
		handler     http.Handler
		wantProblem string // "" when the exchange matches the description
	}{
		{name: "matching answer", method: "GET", path: "/clients/a",
			handler: answering(200, goodClient)},
		{name: "renamed field", method: "GET", path: "/clients/a",
			handler:     answering(200, strings.Replace(goodClient, `"capacity"`, `"capacty"`, 1)),
			wantProblem: "does not match the description"},
		{name: "key and prefix both", method: "GET", path: "/clients/a",
			handler:     answering(200, strings.Replace(goodClient, `"api_key":"k"`, `"api_key":"k","api_key_prefix":"k"`, 1)),
			wantProblem: "does not match the description"},
		{name: "hashed mode read answer", method: "GET", path: "/clients/a",
			handler: answering(200, strings.Replace(goodClient, `"api_key":"k"`, `"api_key_prefix":"abcdef"`, 1))},
		{name: "create answer without the key", method: "POST", path: "/clients", body: `{"client_id":"a"}`,
			handler:     answering(201, strings.Replace(goodClient, `"api_key":"k"`, `"api_key_prefix":"abcdef"`, 1)),
			wantProblem: "does not match the description"},
		{name: "undescribed status", method: "GET", path: "/clients/a",
			handler: answering(418, `{"code":418,"message":"teapot"}`), wantProblem: "status is not supported"},
		{name: "invalid request accepted", method: "POST", path: "/clients", body: `{"client_id":"a","extra":1}`,
			handler: answering(201, goodClient), wantProblem: "calls the request invalid"},
		{name: "invalid request refused", method: "POST", path: "/clients", body: `{"client_id":"a","extra":1}`,
			handler: answering(400, `{"code":400,"message":"unknown field \"extra\""}`)},
		{name: "201 without Location", method: "POST", path: "/clients", body: `{"client_id":"a"}`,
			handler: answering(201, goodClient), wantProblem: `response header "Location" missing`},
		{name: "201 with Location", method: "POST", path: "/clients", body: `{"client_id":"a"}`,
			handler: withLocation("/clients/a", answering(201, goodClient))},
		{name: "valid request refused with 400", method: "GET", path: "/clients/a",
			handler:     answering(400, `{"code":400,"message":"client_id: no"}`),
			wantProblem: "calls the request valid, yet it got 400"},
		{name: "semantic 400 to a valid request", method: "PATCH", path: "/clients/a", body: `{"client_id":"b","capacity":5}`,
			handler: answering(400, `{"code":400,"message":"client_id: \"b\" in the body does not match \"a\" in the path"}`)},
		{name: "undescribed path answering 200", method: "GET", path: "/nowhere",
			handler: answering(200, `{}`), wantProblem: "path not described"},
		{name: "undescribed path answering 404", method: "GET", path: "/nowhere",
			handler: answering(404, `{"code":404,"message":"not found"}`)},
		{name: "405 without Allow", method: "PUT", path: "/clients",
			handler: answering(405, `{"code":405,"message":"no"}`), wantProblem: "want 405 with Allow"},
		{name: "error body of the wrong shape", method: "GET", path: "/nowhere",
			handler: answering(404, `{"error":"not found"}`), wantProblem: "does not match Error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{TB: t}
			h := Handler(rec, tt.handler)
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			r := httptest.NewRequest(tt.method, tt.path, body)
			if tt.body != "" {
				r.Header.Set("Content-Type", "application/json")
			}
			h.ServeHTTP(httptest.NewRecorder(), r)
			problems := rec.reported()
			if tt.wantProblem == "" {
				assert.Empty(t, problems)
				return
			}
			require.Len(t, problems, 1)
			assert.Contains(t, problems[0], tt.wantProblem)
		})
	}
}

// TestDescribedPathsAreAdminPaths: on a shared port httpapi routes by
// openapi.IsAdminPath; a described path it does not own would be
// forwarded, and one it owns but the description lacks goes unchecked
// unless the checkers use the same rule.
func TestDescribedPathsAreAdminPaths(t *testing.T) {
	doc := Load(t)
	for path := range doc.Paths.Map() {
		if path == "/" {
			continue // the admin port's front page; forwarded on a shared port
		}
		concrete := strings.NewReplacer("{client_id}", "a", "{file}", "app.js").Replace(path)
		assert.True(t, openapi.IsAdminPath(concrete), path)
	}
}

func TestSharedHandlerChecksUndescribedAdminPaths(t *testing.T) {
	tests := []struct {
		path        string
		wantProblem bool
	}{
		{"/stats/nowhere", true},
		{"/clients/a/b", true},
		{"/anything", false},
		{"/", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			rec := &recorder{TB: t}
			h := SharedHandler(rec, answering(200, `{}`))
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", tt.path, nil))
			if !tt.wantProblem {
				assert.Empty(t, rec.reported())
				return
			}
			require.Len(t, rec.reported(), 1)
			assert.Contains(t, rec.reported()[0], "path not described")
		})
	}
}

func TestTransportChecksAdminPathsOnly(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/backends" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"backends":[{"url":"x"}]}`) // fields missing
			return
		}
		_, _ = io.WriteString(w, "forwarded")
	}))
	t.Cleanup(srv.Close)
	rec := &recorder{TB: t}
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	hc := &http.Client{Transport: Transport(rec, base)}
	for _, p := range []string{"/", "/anything", "/backends", "/stats/nowhere"} {
		resp, err := hc.Get(srv.URL + p)
		require.NoError(t, err)
		data, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		assert.NotEmpty(t, data, "the caller still reads the body")
	}
	problems := rec.reported()
	require.Len(t, problems, 2, "only /backends and /stats/nowhere are admin paths")
	assert.Contains(t, strings.Join(problems, "\n"), "GET /backends")
	assert.Contains(t, strings.Join(problems, "\n"), "GET /stats/nowhere → 200: path not described")
}
