package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// adminAnswer sends one admin request with a raw body and returns status,
// Content-Type and body.
func adminAnswer(t *testing.T, method, rawURL, contentType string, body []byte) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, strings.NewReader(string(body)))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := checkedClient(t).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// TestHostileAdminInput sends the admin API malformed and malicious input,
// on PostgreSQL: every one is a 400 (or 413) JSON error, and afterwards the
// table holds exactly the clients it held before, unchanged.
func TestHostileAdminInput(t *testing.T) {
	rec := newRecorder(t)
	dsn := pgtest.New(t)
	cfg := baseConfig(t, rec.url)
	cfg["database_url"] = dsn
	in := start(t, cfg)
	base := "http://" + in.addr
	for _, id := range []string{"alice", "bob"} {
		code, body := call(t, http.MethodPost, base+"/clients", "", `{"client_id":"`+id+`","rate_per_sec":2,"capacity":7}`)
		require.Equal(t, http.StatusCreated, code, body)
	}
	before := listClients(t, base)
	require.Len(t, before, 2)

	deep := func(open, close string, n int) string {
		return strings.Repeat(open, n) + "1" + strings.Repeat(close, n)
	}
	sqlIDs := []string{
		`x'; DROP TABLE clients; --`,
		`alice' OR '1'='1`,
		`"; DELETE FROM clients; --`,
		`a%`,
		"a\x00b",
		`*`,
		`bob); TRUNCATE clients; --`,
	}
	type hostile struct {
		name, method, path, body string
		want                     int
	}
	tests := []hostile{
		{"invalid UTF-8 in client_id", "POST", "/clients", "{\"client_id\":\"\xff\xfe\"}", 400},
		{"invalid UTF-8 in a field name", "POST", "/clients", "{\"\xc3\x28\":1}", 400},
		{"overlong UTF-8 slash", "POST", "/clients", "{\"client_id\":\"a\xc0\xafb\"}", 400},
		{"lone surrogate escape", "POST", "/clients", `{"client_id":"\ud800"}`, 400},
		{"UTF-16 body", "POST", "/clients", "\xff\xfe{\x00}\x00", 400},
		{"deep arrays in a field", "POST", "/clients", `{"client_id":"deep","rate_per_sec":` + deep("[", "]", 100000) + `}`, 400},
		{"deep objects in a field", "POST", "/clients", `{"client_id":"deep","capacity":` + deep(`{"a":`, "}", 50000) + `}`, 400},
		{"deep arrays as the body", "POST", "/clients", deep("[", "]", 200000), 400},
		{"deep nesting in PATCH", "PATCH", "/clients/alice", `{"capacity":` + deep("[", "]", 100000) + `}`, 400},
		{"rate 1e400", "POST", "/clients", `{"client_id":"huge","rate_per_sec":1e400}`, 400},
		{"capacity 1e400", "POST", "/clients", `{"client_id":"huge","capacity":1e400}`, 400},
		{"capacity -1e400", "POST", "/clients", `{"client_id":"huge","capacity":-1e400}`, 400},
		{"capacity of 40 digits", "POST", "/clients", `{"client_id":"huge","capacity":` + strings.Repeat("9", 40) + `}`, 400},
		{"capacity 1e9+1", "POST", "/clients", `{"client_id":"huge","capacity":1000000001}`, 400},
		{"capacity 2^63", "PATCH", "/clients/alice", `{"capacity":9223372036854775808}`, 400},
		{"rate 1e400 in PATCH", "PATCH", "/clients/alice", `{"rate_per_sec":1e400}`, 400},
		{"rate 1e-400 (underflows to 0)", "PATCH", "/clients/alice", `{"rate_per_sec":1e-400}`, 400},
		{"NaN literal", "PATCH", "/clients/alice", `{"rate_per_sec":NaN}`, 400},
		{"Infinity literal", "PATCH", "/clients/alice", `{"rate_per_sec":Infinity}`, 400},
		{"hex number", "PATCH", "/clients/alice", `{"capacity":0x10}`, 400},
		{"client_id a number", "POST", "/clients", `{"client_id":5}`, 400},
		{"client_id an array", "POST", "/clients", `{"client_id":["alice"]}`, 400},
		{"client_id an object", "POST", "/clients", `{"client_id":{"$ne":null}}`, 400},
		{"client_id null", "POST", "/clients", `{"client_id":null}`, 400},
		{"rate a string", "POST", "/clients", `{"client_id":"typed","rate_per_sec":"5"}`, 400},
		{"capacity a boolean", "POST", "/clients", `{"client_id":"typed","capacity":true}`, 400},
		{"capacity fractional", "POST", "/clients", `{"client_id":"typed","capacity":1.5}`, 400},
		{"api_key a number", "POST", "/clients", `{"client_id":"typed","api_key":12345678901234567890}`, 400},
		{"body a string", "POST", "/clients", `"alice"`, 400},
		{"body null", "POST", "/clients", `null`, 400},
		{"body an array", "POST", "/clients", `[{"client_id":"arr"}]`, 400},
		{"empty body", "POST", "/clients", ``, 400},
		{"two objects", "POST", "/clients", `{"client_id":"two"}{"client_id":"three"}`, 400},
		{"duplicate field", "POST", "/clients", `{"client_id":"dup","client_id":"alice"}`, 400},
		{"case-folded field", "POST", "/clients", `{"Client_ID":"fold"}`, 400},
		{"unknown field", "POST", "/clients", `{"client_id":"unk","tokens":1e9}`, 400},
		{"PATCH changing the key", "PATCH", "/clients/alice", `{"api_key":"0123456789abcdef0123"}`, 400},
		{"PATCH body id differs from path", "PATCH", "/clients/alice", `{"client_id":"bob","capacity":1}`, 400},
		{"body over 1 MiB", "POST", "/clients", `{"client_id":"big","api_key":"` + strings.Repeat("k", 1<<20) + `"}`, 413},
	}
	for _, id := range sqlIDs {
		quoted, err := json.Marshal(id)
		require.NoError(t, err)
		esc := url.PathEscape(id)
		tests = append(tests,
			hostile{"create id " + id, "POST", "/clients", `{"client_id":` + string(quoted) + `}`, 400},
			hostile{"PATCH body id " + id, "PATCH", "/clients", `{"client_id":` + string(quoted) + `,"capacity":1}`, 400},
			hostile{"GET id " + id, "GET", "/clients/" + esc, "", 400},
			hostile{"PATCH id " + id, "PATCH", "/clients/" + esc, `{"capacity":1}`, 400},
			hostile{"DELETE id " + id, "DELETE", "/clients/" + esc, "", 400},
			hostile{"rotate id " + id, "POST", "/clients/" + esc + "/rotate-key", "", 400},
			hostile{"list after " + id, "GET", "/clients?after=" + url.QueryEscape(id), "", 400},
		)
	}
	tests = append(tests,
		hostile{"list limit with SQL", "GET", "/clients?limit=" + url.QueryEscape("1; DROP TABLE clients"), "", 400},
		hostile{"list limit 1e400", "GET", "/clients?limit=1e400", "", 400},
		hostile{"list limit negative", "GET", "/clients?limit=-1", "", 400},
		hostile{"list limit over 1000", "GET", "/clients?limit=1001", "", 400},
		hostile{"list with a bad escape", "GET", "/clients?after=%zz", "", 400},
	)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := ""
			if tt.body != "" {
				ct = "application/json"
			}
			code, ctype, body := adminAnswer(t, tt.method, base+tt.path, ct, []byte(tt.body))
			assert.Equal(t, tt.want, code, "%.300s", body)
			assert.Equal(t, "application/json", ctype)
			assert.Equal(t, tt.want, jsonCode(body), "%.300s", body)
		})
	}

	after := listClients(t, base)
	assert.Equal(t, before, after, "the clients are exactly as before")
	assertClientsTable(t, dsn, []string{"alice", "bob"})
	code, body := call(t, http.MethodGet, base+"/clients/alice", "", "")
	assert.Equal(t, http.StatusOK, code, body)
}

// listClients returns GET /clients without the time-varying fields.
func listClients(t *testing.T, base string) []map[string]any {
	t.Helper()
	code, body := call(t, http.MethodGet, base+"/clients?limit=1000", "", "")
	require.Equal(t, http.StatusOK, code, body)
	var out struct {
		Clients []map[string]any `json:"clients"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &out))
	for _, c := range out.Clients {
		delete(c, "tokens")
		delete(c, "last_refill")
	}
	return out.Clients
}

// assertClientsTable checks in PostgreSQL itself that the clients table
// exists and holds exactly ids.
func assertClientsTable(t *testing.T, dsn string, ids []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT client_id FROM clients ORDER BY client_id`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	assert.Equal(t, ids, got)
}
