package httpapi

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tollgate/tollgate/httpapi/openapitest"
	"github.com/tollgate/tollgate/messages"
)

// testNow is the clock of every test admin.
var testNow = time.Date(2025, 3, 4, 5, 6, 7, 890_000_000, time.UTC)

// Default limits of test admins (the shipped config's values).
const (
	testRate     = 5
	testCapacity = 20
)

// testAdmin is an admin API over an in-memory Clients, with its log lines
// captured.
type testAdmin struct {
	handler http.Handler
	clients *memClients
	logs    *bytes.Buffer
}

// newTestAdmin builds an admin over a fresh memClients and two healthy
// backends; edit adjusts the options first.
func newTestAdmin(t *testing.T, hashed bool, edit ...func(*Options)) *testAdmin {
	t.Helper()
	ta := &testAdmin{clients: newMemClients(hashed), logs: &bytes.Buffer{}}
	opts := Options{
		Clients: ta.clients,
		Backends: staticBackends(
			messages.BackendStatus{URL: "http://127.0.0.1:8081", Healthy: true},
			messages.BackendStatus{URL: "http://127.0.0.1:8082", Healthy: true},
		),
		Defaults: func() (float64, int64) { return testRate, testCapacity },
		Logger:   slog.New(slog.NewJSONHandler(ta.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:      func() time.Time { return testNow },
	}
	for _, e := range edit {
		e(&opts)
	}
	ta.handler = openapitest.Handler(t, NewAdmin(opts))
	return ta
}

// newRequest builds a request from a loopback peer; a non-empty body is
// sent as application/json.
func newRequest(method, path, body string) *http.Request {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, path, rd)
	r.RemoteAddr = "127.0.0.1:40000"
	r.Host = "localhost:8080"
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	return r
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// do serves one loopback request on the test admin.
func (ta *testAdmin) do(method, path, body string) *httptest.ResponseRecorder {
	return serve(ta.handler, newRequest(method, path, body))
}

// mustCreate creates a client and returns its JSON.
func (ta *testAdmin) mustCreate(t *testing.T, body string) map[string]any {
	t.Helper()
	rec := ta.do(http.MethodPost, "/clients", body)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	return decodeMap(t, rec)
}

func decodeMap(t *testing.T, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var m map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &m), rec.Body.String())
	return m
}

// assertError checks an error answer: status, JSON body with the same
// code, and a message containing want.
func assertError(t *testing.T, rec *httptest.ResponseRecorder, status int, want string) {
	t.Helper()
	require.Equal(t, status, rec.Code, rec.Body.String())
	var body errorBody
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body), rec.Body.String())
	assert.Equal(t, status, body.Code)
	assert.Contains(t, body.Message, want)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
}
