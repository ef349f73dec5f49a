package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestNewMainSplitsByPath(t *testing.T) {
	tests := []struct {
		path  string
		admin bool
	}{
		{"/clients", true},
		{"/clients/alice", true},
		{"/clients/alice/rotate-key", true},
		{"/clients/", true},
		{"/backends", true},
		{"/healthz", true},
		{"/readyz", true},
		{"/metrics", true},
		{"/openapi.json", true},
		{"/ui", true},
		{"/ui/", true},
		{"/ui/app.js", true},
		{"/stats/traffic", true},
		{"/stats/top-clients", true},
		{"/", false}, // the index page is the admin port's alone
		{"/uix", false},
		{"/openapi.json/x", false},
		{"/stats", false},
		{"/api/users", false},
		{"/clientsx", false},
		{"/Clients", false},
		{"/backends/1", false},
		{"/healthz/", false},
		{"/metrics/x", false},
		{"/api/clients", false},
		{"//clients", false},
		{"/health", false}, // the backends' own health path passes through
	}
	admin := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Header().Set("X-Served-By", "admin") })
	forward := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Header().Set("X-Served-By", "forward") })
	h := NewMain(admin, forward)
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://tollgate"+tt.path, nil))
			want := "forward"
			if tt.admin {
				want = "admin"
			}
			assert.Equal(t, want, rec.Header().Get("X-Served-By"))
		})
	}
}

func TestNewMainServesTheAdminAPI(t *testing.T) {
	ta := newTestAdmin(t, false)
	forward := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := NewMain(ta.handler, forward)
	rec := serve(h, newRequest(http.MethodPost, "/clients", `{"client_id":"alice"}`))
	assert.Equal(t, http.StatusCreated, rec.Code)
	assert.Equal(t, http.StatusTeapot, serve(h, newRequest(http.MethodGet, "/anything", "")).Code)
}

func TestIsAdminPathDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		isAdminPath("/api/v1/orders/12345")
		isAdminPath("/clients/alice")
	})
	assert.Zero(t, allocs)
}

func BenchmarkNewMainForward(b *testing.B) {
	h := NewMain(http.NotFoundHandler(), http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	r := httptest.NewRequest(http.MethodGet, "/api/v1/orders/12345", nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}
