// Package openapitest checks admin API traffic against the OpenAPI
// description in package openapi. Tests wrap the admin handler (Handler)
// or their HTTP client's transport (Transport); every request they send
// and every answer they get is then validated with kin-openapi, and a
// mismatch fails the test. So the description cannot drift from the code:
// a field renamed in a handler, a status added or a schema left behind
// makes the admin tests fail.
//
// The rules, beyond "the answer matches its operation and status":
//   - a request the description calls invalid must get a 4xx answer (and
//     that answer must match too): the code must not accept what the
//     description refuses;
//   - a status the description does not list for the operation fails;
//   - a request the description calls valid must not get a 400, unless
//     its message is one of the semanticErrors the description cannot
//     express (a client_id in the body that differs from the path's);
//   - a path or method no operation has must answer 404 or 405 with the
//     Error body. Handler checks every path; SharedHandler and Transport
//     check the admin paths of a shared port (openapi.IsAdminPath, the
//     rule httpapi routes by), and let the rest pass as forwarded traffic.
//
// It starts no goroutines; it is safe for concurrent use.
package openapitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/tollgate/tollgate/httpapi/openapi"
)

// unchecked are path prefixes the description leaves out on purpose:
// net/http/pprof's pages, off by default and not part of the API.
var unchecked = []string{"/debug/pprof/"}

// loaded is the description, loaded once for every test of a run.
var loaded = sync.OnceValues(load)

type description struct {
	doc    *openapi3.T
	router routers.Router
	errors *openapi3.Schema // components.schemas.Error
}

// textTypes are the text answers of the dashboard and /metrics that
// kin-openapi has no decoder for; they are checked as plain strings.
var textTypes = []string{"text/html", "text/javascript", "text/css", "image/svg+xml", "application/openmetrics-text"}

func load() (*description, error) {
	for _, ct := range textTypes {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
	doc, err := openapi3.NewLoader().LoadFromData(openapi.JSON)
	if err != nil {
		return nil, fmt.Errorf("openapitest: load the description: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("openapitest: the description is invalid: %w", err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("openapitest: route the description: %w", err)
	}
	ref := doc.Components.Schemas["Error"]
	if ref == nil || ref.Value == nil {
		return nil, errors.New("openapitest: the description has no Error schema")
	}
	return &description{doc: doc, router: router, errors: ref.Value}, nil
}

// Load returns the parsed description, failing t if it does not load or
// validate.
func Load(t testing.TB) *openapi3.T {
	t.Helper()
	d, err := loaded()
	if err != nil {
		t.Fatal(err)
	}
	return d.doc
}

// isAdmin reports whether Transport and SharedHandler check r: a path
// the admin API owns on a shared port, whether described or not, so an
// admin path the description lacks fails instead of passing as forwarded
// traffic. GET / is forwarded on a shared port and left to Handler.
func isAdmin(r *http.Request) bool { return openapi.IsAdminPath(r.URL.Path) }

// semanticErrors are the messages of 400s that a request valid by the
// description may get, because the rule it breaks spans values a schema
// cannot relate or bytes a schema never sees. Any other 400 to a valid
// request is drift: the code refuses what the description allows.
var semanticErrors = []string{
	"in the body does not match",            // PATCH /clients/{id}: body and path name different clients
	"appears twice",                         // a JSON field given twice: decoders keep one silently
	"is not valid UTF-8",                    // JSON Schema sees decoded strings
	"malformed query string",                // a query the router decodes leniently
	"unexpected data after the JSON object", // kin-openapi's decoder stops after the first value
}

// exchange is one request and its answer, bodies read.
type exchange struct {
	req     *http.Request
	reqBody []byte
	status  int
	header  http.Header
	body    []byte
}

// check returns what is wrong with x, or nil.
func check(x exchange) error {
	for _, p := range unchecked {
		if strings.HasPrefix(x.req.URL.Path, p) {
			return nil
		}
	}
	d, err := loaded()
	if err != nil {
		return err
	}
	route, params, err := d.router.FindRoute(x.req)
	switch {
	case errors.Is(err, routers.ErrMethodNotAllowed):
		if x.status != http.StatusMethodNotAllowed || x.header.Get("Allow") == "" {
			return fmt.Errorf("%s is not described: want 405 with Allow, got %d", x.req.Method, x.status)
		}
		return d.checkError(x)
	case err != nil:
		// Admin authentication answers before routing, so 401 and 403
		// are as right as 404 here.
		switch x.status {
		case http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden:
			return d.checkError(x)
		}
		return fmt.Errorf("path not described: want 404 (or 401/403), got %d", x.status)
	}
	in := &openapi3filter.RequestValidationInput{
		Request:    withBody(x.req, x.reqBody),
		PathParams: params,
		Route:      route,
		Options: &openapi3filter.Options{
			AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc,
			IncludeResponseStatus: true,
			MultiError:            true,
		},
	}
	reqErr := openapi3filter.ValidateRequest(context.Background(), in)
	if reqErr != nil && (x.status < 400 || x.status >= 500) {
		return fmt.Errorf("the description calls the request invalid, yet it got %d: %w", x.status, reqErr)
	}
	if reqErr == nil && x.status == http.StatusBadRequest && !isSemantic(x.body) {
		return errors.New("the description calls the request valid, yet it got 400 (add the rule to the description, " +
			"or the message to semanticErrors if no schema can say it)")
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 x.status,
		Header:                 x.header,
		Body:                   io.NopCloser(bytes.NewReader(x.body)),
		Options:                in.Options,
	}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		return fmt.Errorf("answer %d does not match the description: %w", x.status, err)
	}
	return nil
}

// isSemantic reports whether an error body's message is one of
// semanticErrors.
func isSemantic(body []byte) bool {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) != nil {
		return false
	}
	for _, m := range semanticErrors {
		if strings.Contains(e.Message, m) {
			return true
		}
	}
	return false
}

// checkError checks an answer outside every operation against the Error
// schema.
func (d *description) checkError(x exchange) error {
	if ct := x.header.Get("Content-Type"); ct != "application/json" {
		return fmt.Errorf("error answer %d has Content-Type %q, want application/json", x.status, ct)
	}
	var v any
	if err := json.Unmarshal(x.body, &v); err != nil {
		return fmt.Errorf("error answer %d is not JSON: %w", x.status, err)
	}
	if err := d.errors.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
		return fmt.Errorf("error answer %d does not match Error: %w", x.status, err)
	}
	return nil
}

// withBody returns a copy of r whose body reads data. An empty body is
// http.NoBody: a client request with a body of length 0 would otherwise be
// sent chunked, which is not the body-less request the test made.
func withBody(r *http.Request, data []byte) *http.Request {
	c := r.Clone(r.Context())
	c.Body, c.ContentLength = http.NoBody, 0
	if len(data) > 0 {
		c.Body = io.NopCloser(bytes.NewReader(data))
		c.ContentLength = int64(len(data))
	}
	return c
}

// report fails t with what check found.
func report(t testing.TB, x exchange, err error) {
	t.Helper()
	body := string(x.body)
	if len(body) > 500 {
		body = body[:500] + "…"
	}
	t.Errorf("openapitest: %s %s → %d: %v\nanswer: %s", x.req.Method, x.req.URL.RequestURI(), x.status, err, body)
}

// Handler returns h with every request it serves and every answer it
// gives checked against the description; paths the description lacks
// must answer 404. Bodies are copied as they pass, so h sees and writes
// exactly what it would unwrapped.
func Handler(t testing.TB, h http.Handler) http.Handler {
	t.Helper()
	return handler(t, h, true)
}

// SharedHandler is Handler for a main port that also serves the admin API
// (admin_port 0): requests to admin paths (openapi.IsAdminPath) are
// checked, described or not; every other path (and /) is forwarded
// traffic and passes unchecked.
func SharedHandler(t testing.TB, h http.Handler) http.Handler {
	t.Helper()
	return handler(t, h, false)
}

func handler(t testing.TB, h http.Handler, strict bool) http.Handler {
	t.Helper()
	Load(t)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strict && !isAdmin(r) {
			h.ServeHTTP(w, r)
			return
		}
		var reqBody []byte
		if r.Body != nil {
			// A read error (a body over the limit in a test) leaves what
			// was read; the handler then sees the same bytes.
			reqBody, _ = io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(reqBody))
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(&teeWriter{ResponseWriter: w, rec: rec}, r)
		x := exchange{req: r, reqBody: reqBody, status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
		if err := check(x); err != nil {
			report(t, x, err)
		}
	})
}

// teeWriter writes an answer both to the real writer and to a recorder.
type teeWriter struct {
	http.ResponseWriter
	rec   *httptest.ResponseRecorder
	wrote bool // the status line has gone out
}

func (w *teeWriter) WriteHeader(status int) {
	if !w.wrote {
		w.wrote = true
		copyHeader(w.rec.Header(), w.ResponseWriter.Header())
	}
	w.rec.WriteHeader(status)
	w.ResponseWriter.WriteHeader(status)
}

func (w *teeWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_, _ = w.rec.Write(p)
	return w.ResponseWriter.Write(p)
}

func (w *teeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func copyHeader(dst, src http.Header) {
	for k, v := range src {
		dst[k] = v
	}
}

// Transport returns base (http.DefaultTransport when nil) with every
// request to an admin path (openapi.IsAdminPath), and its answer, checked
// against the description; an admin path the description lacks must
// answer 404 (or 401/403). Other paths pass unchecked: on a shared port
// they are forwarded traffic. GET / is forwarded traffic too when admin_port is 0,
// so it is left to the handler tests. Answers of checked requests are read
// whole before they are returned.
func Transport(t testing.TB, base http.RoundTripper) http.RoundTripper {
	t.Helper()
	Load(t)
	if base == nil {
		base = http.DefaultTransport
	}
	return roundTripper{t: t, base: base}
}

type roundTripper struct {
	t    testing.TB
	base http.RoundTripper
}

func (rt roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	if !isAdmin(r) {
		// Forwarded traffic passes untouched, its answer still streaming.
		return rt.base.RoundTrip(r)
	}
	var reqBody []byte
	if r.Body != nil {
		var err error
		if reqBody, err = io.ReadAll(r.Body); err != nil {
			return nil, err
		}
		_ = r.Body.Close()
		r = withBody(r, reqBody)
	}
	resp, err := rt.base.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return resp, nil // the caller's read sees the short body; nothing to check
	}
	x := exchange{req: r, reqBody: reqBody, status: resp.StatusCode, header: resp.Header, body: body}
	if err := check(x); err != nil {
		report(rt.t, x, err)
	}
	return resp, nil
}
