package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// API keys at rest (SPEC 4, rate_limiter.hash_api_keys) and in logs.

// storeKind is one of the two stores the key tests run on.
type storeKind struct {
	name string
	// setup points cfg at the store and returns what the test needs to
	// look inside it: a DSN, or the embedded store's file.
	setup func(t *testing.T, cfg map[string]any) (dsn string)
}

var storeKinds = []storeKind{
	{"embedded", func(t *testing.T, cfg map[string]any) string { return "" }},
	{"postgres", func(t *testing.T, cfg map[string]any) string {
		dsn := pgtest.New(t)
		cfg["database_url"] = dsn
		return dsn
	}},
}

func setHashKeys(cfg map[string]any, on bool) {
	cfg["rate_limiter"].(map[string]any)["hash_api_keys"] = on
}

// clientView is a client as the admin API shows it, key fields included.
type clientView struct {
	ClientID     string  `json:"client_id"`
	APIKey       *string `json:"api_key"`
	APIKeyPrefix *string `json:"api_key_prefix"`
}

func decodeView(t *testing.T, body string) clientView {
	t.Helper()
	var v clientView
	require.NoError(t, json.Unmarshal([]byte(body), &v), body)
	return v
}

// storedKey is a client's key columns as PostgreSQL holds them.
type storedKey struct {
	apiKey *string
	hash   []byte
	prefix string
}

func pgStoredKey(t *testing.T, dsn, id string) storedKey {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var k storedKey
	require.NoError(t, conn.QueryRow(ctx,
		`SELECT api_key, api_key_hash, api_key_prefix FROM clients WHERE client_id = $1`, id).
		Scan(&k.apiKey, &k.hash, &k.prefix))
	return k
}

func sha(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// TestAPIKeysAtRest runs both stores with keys hashed and in clear: what
// the store keeps, what each answer shows, and that rotation and deletion
// stop a key at once, also across a restart.
func TestAPIKeysAtRest(t *testing.T) {
	for _, kind := range storeKinds {
		for _, hashed := range []bool{true, false} {
			name := kind.name + "/clear"
			if hashed {
				name = kind.name + "/hashed"
			}
			t.Run(name, func(t *testing.T) { testKeysAtRest(t, kind, hashed) })
		}
	}
}

func testKeysAtRest(t *testing.T, kind storeKind, hashed bool) {
	rec := newRecorder(t)
	cfg := baseConfig(t, rec.url)
	setHashKeys(cfg, hashed)
	dsn := kind.setup(t, cfg)
	in := start(t, cfg)
	base := "http://" + in.addr

	code, body := call(t, http.MethodPost, base+"/clients", "", `{"client_id":"hk","capacity":100}`)
	require.Equal(t, http.StatusCreated, code, body)
	created := decodeView(t, body)
	require.NotNil(t, created.APIKey, "the 201 shows the key: %s", body)
	key := *created.APIKey
	assert.Nil(t, created.APIKeyPrefix)
	given := "given-key-0123456789-abcdef"
	code, body = call(t, http.MethodPost, base+"/clients", "", `{"client_id":"given","api_key":"`+given+`"}`)
	require.Equal(t, http.StatusCreated, code, body)
	assert.Equal(t, given, *decodeView(t, body).APIKey)

	// Reads show the key only when it is kept in clear.
	assertShown := func(body, key string) {
		t.Helper()
		v := decodeView(t, body)
		if hashed {
			assert.Nil(t, v.APIKey, body)
			require.NotNil(t, v.APIKeyPrefix, body)
			assert.Equal(t, key[:6], *v.APIKeyPrefix)
			assert.NotContains(t, body, key)
			return
		}
		require.NotNil(t, v.APIKey, body)
		assert.Equal(t, key, *v.APIKey)
	}
	code, body = call(t, http.MethodGet, base+"/clients/hk", "", "")
	require.Equal(t, http.StatusOK, code, body)
	assertShown(body, key)
	code, body = call(t, http.MethodPatch, base+"/clients/hk", "", `{"capacity":50}`)
	require.Equal(t, http.StatusOK, code, body)
	assertShown(body, key)
	code, body = call(t, http.MethodGet, base+"/clients", "", "")
	require.Equal(t, http.StatusOK, code, body)
	if hashed {
		assert.NotContains(t, body, `"api_key":`)
		assert.NotContains(t, body, key)
		assert.NotContains(t, body, given)
	}

	if dsn != "" {
		assertPGKey(t, dsn, "hk", key, hashed)
		assertPGKey(t, dsn, "given", given, hashed)
	}

	// Rotation: the old key stops at once, the new one works at once.
	status := func(k string) int { c, _ := call(t, http.MethodGet, base+"/fwd", k, ""); return c }
	require.Equal(t, http.StatusOK, status(key), "cached before the rotation")
	code, body = call(t, http.MethodPost, base+"/clients/hk/rotate-key", "", "")
	require.Equal(t, http.StatusOK, code, body)
	rotated := decodeView(t, body)
	require.NotNil(t, rotated.APIKey, "rotate-key shows the new key: %s", body)
	newKey := *rotated.APIKey
	assert.NotEqual(t, key, newKey)
	assert.Equal(t, http.StatusUnauthorized, status(key), "old key right after rotation")
	assert.Equal(t, http.StatusOK, status(newKey), "new key right after rotation")
	code, body = call(t, http.MethodGet, base+"/clients/hk", "", "")
	require.Equal(t, http.StatusOK, code, body)
	assertShown(body, newKey)
	if dsn != "" {
		assertPGKey(t, dsn, "hk", newKey, hashed)
	}

	// Deletion stops the given key at once.
	require.Equal(t, http.StatusOK, status(given))
	code, _ = call(t, http.MethodDelete, base+"/clients/given", "", "")
	require.Equal(t, http.StatusNoContent, code)
	assert.Equal(t, http.StatusUnauthorized, status(given), "deleted client's key")

	// After a restart only the store's copy is left: the new key works,
	// the old ones do not.
	require.NoError(t, in.stop())
	if dsn == "" {
		assertFileKeys(t, cfg["state_file"].(string), []string{key, newKey, given}, hashed)
	}
	assertNoKeys(t, in.logs.String(), key, newKey, given)
	in = start(t, cfg)
	base = "http://" + in.addr
	assert.Equal(t, http.StatusOK, status(newKey), "new key after restart")
	assert.Equal(t, http.StatusUnauthorized, status(key), "old key after restart")
	assert.Equal(t, http.StatusUnauthorized, status(given), "deleted key after restart")
	require.NoError(t, in.stop())
	assertNoKeys(t, in.logs.String(), key, newKey, given)
}

// assertPGKey checks the clients row of id: with hashing only the SHA-256
// and the 6-character prefix are stored, else the key in clear as well.
func assertPGKey(t *testing.T, dsn, id, key string, hashed bool) {
	t.Helper()
	k := pgStoredKey(t, dsn, id)
	assert.Equal(t, sha(key), k.hash, "api_key_hash = sha256(key)")
	assert.Equal(t, key[:6], k.prefix)
	if hashed {
		assert.Nil(t, k.apiKey, "api_key IS NULL")
		return
	}
	require.NotNil(t, k.apiKey)
	assert.Equal(t, key, *k.apiKey)
}

// assertFileKeys checks the embedded store's file, bytes and all (free
// pages included): with hashing no key appears in it, only their hashes.
func assertFileKeys(t *testing.T, path string, keys []string, hashed bool) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NotEmpty(t, data)
	for _, k := range keys {
		if hashed {
			assert.False(t, bytes.Contains(data, []byte(k)), "key %.6s... in the state file", k)
		}
	}
	// The current key's hash is how it is found.
	assert.True(t, bytes.Contains(data, sha(keys[1])), "hash of the current key in the state file")
}

// assertNoKeys fails if any key appears in the log text, raw or escaped.
func assertNoKeys(t *testing.T, logs string, keys ...string) {
	t.Helper()
	for _, k := range keys {
		escaped, _ := json.Marshal(k)
		found := strings.Contains(logs, k) || strings.Contains(logs, strings.Trim(string(escaped), `"`)) ||
			strings.Contains(logs, hex.EncodeToString([]byte(k)))
		assert.False(t, found, "key %.6s... appears in the logs", k)
	}
}

// TestKeysNeverInLogs runs a realistic session with every log line on
// (debug, access log) and finds none of the keys used in the output, nor
// in what the backend receives, nor in /metrics.
func TestKeysNeverInLogs(t *testing.T) {
	for _, kind := range storeKinds {
		for _, hashed := range []bool{false, true} {
			name := kind.name + "/clear"
			if hashed {
				name = kind.name + "/hashed"
			}
			t.Run(name, func(t *testing.T) { testKeysNeverInLogs(t, kind, hashed) })
		}
	}
}

func testKeysNeverInLogs(t *testing.T, kind storeKind, hashed bool) {
	rec := newRecorder(t)
	cfg := withAdminKey(t, baseConfig(t, rec.url), testAdminKey)
	cfg["log_level"] = "debug"
	cfg["access_log"] = true
	setHashKeys(cfg, hashed)
	kind.setup(t, cfg)
	in := start(t, cfg)
	base := "http://" + in.addr
	admin := func(method, path, body string, want int) string {
		t.Helper()
		code, out := call(t, method, base+path, testAdminKey, body)
		require.Equal(t, want, code, "%s %s: %s", method, path, out)
		return out
	}
	secrets := []string{testAdminKey}

	alice := jsonString(t, admin("POST", "/clients", `{"client_id":"alice"}`, 201), "api_key")
	bobKey := "bob-given-key-ABCDEFGH-0123456789"
	admin("POST", "/clients", `{"client_id":"bob","capacity":2,"rate_per_sec":0.01,"api_key":"`+bobKey+`"}`, 201)
	admin("POST", "/clients", `{"client_id":"bob2","api_key":"`+bobKey+`"}`, 409)
	admin("POST", "/clients", `{"client_id":"short","api_key":"short-key-7"}`, 400)
	admin("POST", "/clients", `{"client_id":"spacey","api_key":"has space in the key 0123"}`, 400)
	secrets = append(secrets, alice, bobKey, "short-key-7", "has space in the key 0123")

	// Traffic: admitted, both header forms, bodies, 429s.
	for range 3 {
		code, _ := call(t, "POST", base+"/upload", alice, `{"x":1}`)
		require.Equal(t, http.StatusOK, code)
	}
	code, _ := sendStatus(t, "GET", base+"/bare", alice)
	require.Equal(t, http.StatusOK, code)
	codes := map[int]int{}
	for range 4 {
		c, _ := call(t, "GET", base+"/limited", bobKey, "")
		codes[c]++
	}
	require.Equal(t, map[int]int{200: 2, 429: 2}, codes)

	// 401s with wrong keys of every shape.
	wrong := []string{
		"wrong-key-0123456789abcdefghij", alice + "x", strings.ToUpper(alice), alice[1:],
		"Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA", bobKey + bobKey,
	}
	secrets = append(secrets, wrong...)
	for _, k := range wrong {
		c, _ := call(t, "GET", base+"/denied", k, "")
		require.Equal(t, http.StatusUnauthorized, c)
		c, _ = sendStatus(t, "GET", base+"/denied-bare", k)
		require.Equal(t, http.StatusUnauthorized, c)
	}
	c, _ := call(t, "GET", base+"/clients", "wrong-admin-key-0123456789", "")
	require.Equal(t, http.StatusUnauthorized, c)
	secrets = append(secrets, "wrong-admin-key-0123456789")

	// Admin changes: PATCH, rotate, delete, and the old keys refused.
	admin("PATCH", "/clients/alice", `{"capacity":10}`, 200)
	admin("GET", "/clients/alice", "", 200)
	admin("GET", "/clients", "", 200)
	rotated := jsonString(t, admin("POST", "/clients/alice/rotate-key", "", 200), "api_key")
	secrets = append(secrets, rotated)
	c, _ = call(t, "GET", base+"/after-rotate", alice, "")
	require.Equal(t, http.StatusUnauthorized, c)
	c, _ = call(t, "GET", base+"/after-rotate", rotated, "")
	require.Equal(t, http.StatusOK, c)
	admin("DELETE", "/clients/bob", "", 204)
	c, _ = call(t, "GET", base+"/after-delete", bobKey, "")
	require.Equal(t, http.StatusUnauthorized, c)
	metrics := admin("GET", "/metrics", "", 200)

	require.NoError(t, in.stop())
	logs := in.logs.String()
	// The log really recorded the session, so finding nothing means
	// something.
	assert.GreaterOrEqual(t, strings.Count(logs, `"status":401`), 2*len(wrong))
	assert.GreaterOrEqual(t, strings.Count(logs, `"status":429`), 2)
	assert.GreaterOrEqual(t, strings.Count(logs, `"status":200`), 6)
	assert.Contains(t, logs, `"msg":"client key rotated"`)
	assertNoKeys(t, logs, secrets...)
	assertNoKeys(t, metrics, secrets...)

	seen := rec.seen()
	require.NotEmpty(t, seen)
	for _, s := range seen {
		assert.Empty(t, s.header.Values("Authorization"), "%s %s got an Authorization header", s.method, s.path)
		assert.NotEmpty(t, s.header.Get("X-Client-Id"))
		var all strings.Builder
		for name, vals := range s.header {
			all.WriteString(name + ": " + strings.Join(vals, ",") + "\n")
		}
		all.WriteString(s.path + "\n" + s.body)
		assertNoKeys(t, all.String(), secrets...)
	}
}

// sendStatus sends a request with the key bare in Authorization, without
// the Bearer scheme (SPEC 3 accepts both).
func sendStatus(t *testing.T, method, url, key string) (int, string) {
	t.Helper()
	resp, body := send(t, method, url, key, "")
	return resp.StatusCode, body
}
