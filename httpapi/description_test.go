package httpapi

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tollgate/tollgate/httpapi/openapitest"
	"github.com/tollgate/tollgate/messages"
)

// These tests send what the admin API can answer on any route, through
// the openapitest checker, so an answer the description lacks fails them.

// TestOptionsAnswers405WithAllow: SPEC 4 has no OPTIONS; httprouter's
// default would answer it 200 with Allow and no body.
func TestOptionsAnswers405WithAllow(t *testing.T) {
	ta := newTestAdmin(t, false)
	for _, path := range []string{"/clients", "/clients/a", "/healthz", "/stats/traffic", "/openapi.json"} {
		t.Run(path, func(t *testing.T) {
			rec := ta.do(http.MethodOptions, path, "")
			assertError(t, rec, http.StatusMethodNotAllowed, "not allowed")
			assert.NotEmpty(t, rec.Header().Get("Allow"))
		})
	}
}

// TestBodyNotJSONIs415OnEveryRoute: a body that is not JSON is refused on
// every route, so every operation describes the 415.
func TestBodyNotJSONIs415OnEveryRoute(t *testing.T) {
	ta := newTestAdmin(t, false, withTraffic(fakeTraffic{}), func(o *Options) {
		o.Metrics = http.NotFoundHandler()
	})
	tests := []struct{ method, path string }{
		{"GET", "/"}, {"GET", "/clients"}, {"GET", "/clients/a"}, {"DELETE", "/clients/a"},
		{"GET", "/backends"}, {"GET", "/healthz"}, {"GET", "/readyz"}, {"GET", "/metrics"},
		{"GET", "/stats/traffic"}, {"GET", "/stats/top-clients"}, {"GET", "/openapi.json"},
		{"GET", "/ui"}, {"GET", "/ui/"}, {"GET", "/ui/app.js"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := newRequest(tt.method, tt.path, "x")
			r.Header.Set("Content-Type", "text/plain")
			assertError(t, serve(ta.handler, r), http.StatusUnsupportedMediaType, "application/json")
		})
	}
}

// panickingTraffic panics, as a bug in the counters would.
type panickingTraffic struct{}

func (panickingTraffic) Rates() messages.TrafficRates { panic("rates") }
func (panickingTraffic) Top(int) (a, r []messages.TopClient) {
	panic("top")
}

// TestPanicIs500OnEveryRoute: recoverPanics can answer 500 anywhere.
func TestPanicIs500OnEveryRoute(t *testing.T) {
	ta := newTestAdmin(t, false, withTraffic(panickingTraffic{}), func(o *Options) {
		o.Metrics = http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("metrics") })
	})
	for _, path := range []string{"/metrics", "/stats/traffic", "/stats/top-clients"} {
		t.Run(path, func(t *testing.T) {
			assertError(t, ta.do(http.MethodGet, path, ""), http.StatusInternalServerError, "internal error")
		})
	}
}

// TestEveryOperationDescribesSharedErrors covers the routes no test can
// make panic (healthz, the dashboard's files): every operation lists 500,
// and 415, and every 201 requires its Location.
func TestEveryOperationDescribesSharedErrors(t *testing.T) {
	doc := openapitest.Load(t)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			t.Run(method+" "+path, func(t *testing.T) {
				for _, status := range []int{http.StatusUnsupportedMediaType, http.StatusInternalServerError} {
					assert.NotNil(t, op.Responses.Status(status), "no %d", status)
				}
				if created := op.Responses.Status(http.StatusCreated); created != nil {
					loc := created.Value.Headers["Location"]
					require.NotNil(t, loc)
					assert.True(t, loc.Value.Required, "Location on 201 is required")
				}
			})
		}
	}
	assert.True(t, strings.Contains(doc.Info.Description, "405") && strings.Contains(doc.Info.Description, "Allow"),
		"info.description states the 404/405 rule")
}
