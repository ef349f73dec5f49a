package httpapi

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// The 415 for a body that is not JSON comes after routing: an unknown path
// is 404 and a wrong method 405 with Allow, body or not. A body counts only
// when it has bytes, so a chunked write with an empty body needs no
// Content-Type. For real writes 415 still comes before 400 and 413.
func TestBodyCheckFollowsRouting(t *testing.T) {
	ta := newTestAdmin(t, false)
	ta.mustCreate(t, `{"client_id":"a"}`)
	ta.mustCreate(t, `{"client_id":"b"}`)
	tests := []struct {
		name, method, path, body, ct string
		chunked                      bool
		status                       int
		allow                        string
	}{
		{name: "wrong method with a form body", method: http.MethodPut, path: "/clients/a",
			body: "x=1", ct: "application/x-www-form-urlencoded", status: 405, allow: "DELETE, GET, OPTIONS, PATCH"},
		{name: "unknown path with a body", method: http.MethodPost, path: "/nope", body: "x", status: 404},
		{name: "unknown path with a chunked body", method: http.MethodPost, path: "/nope", body: "x", chunked: true, status: 404},
		{name: "chunked empty rotate-key", method: http.MethodPost, path: "/clients/a/rotate-key", chunked: true, status: 200},
		{name: "chunked empty delete", method: http.MethodDelete, path: "/clients/b", chunked: true, status: 204},
		{name: "chunked body without type", method: http.MethodPost, path: "/clients", body: `{"client_id":"c"}`,
			chunked: true, status: 415},
		{name: "malformed body without type", method: http.MethodPost, path: "/clients", body: `{`, status: 415},
		{name: "oversized body without type", method: http.MethodPost, path: "/clients",
			body: strings.Repeat(" ", maxBodyBytes+1), status: 415},
		{name: "oversized chunked body without type", method: http.MethodPatch, path: "/clients/a",
			body: strings.Repeat(" ", maxBodyBytes+1), chunked: true, status: 415},
		{name: "chunked JSON body", method: http.MethodPatch, path: "/clients/a", body: `{"capacity":3}`,
			ct: "application/json", chunked: true, status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRequest(tt.method, tt.path, tt.body)
			r.Header.Del("Content-Type")
			if tt.ct != "" {
				r.Header.Set("Content-Type", tt.ct)
			}
			if tt.chunked {
				r.ContentLength, r.TransferEncoding = -1, []string{"chunked"}
				r.Body = io.NopCloser(strings.NewReader(tt.body))
			}
			rec := serve(ta.handler, r)
			assert.Equal(t, tt.status, rec.Code, rec.Body.String())
			if tt.allow != "" {
				assert.Equal(t, tt.allow, rec.Header().Get("Allow"))
			}
		})
	}
	_, err := ta.clients.GetClient(t.Context(), "c")
	assert.Error(t, err, "nothing was created")
}
