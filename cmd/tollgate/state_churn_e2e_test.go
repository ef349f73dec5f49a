package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist"
	"github.com/tollgate/tollgate/persist/pgtest"
)

// Issue 11, "done when": create, PATCH, DELETE and rotate-key on the same
// few clients from many goroutines, then, for every client, the store,
// GET /clients/{id} and a proxied request (401, or X-RateLimit-Limit)
// agree. Once on the embedded store, once with two instances sharing
// PostgreSQL (each change sent to either).

const (
	churnClients = 4
	churnWorkers = 8
	churnOps     = 40
)

// storedClient is what the store has of a client; present false when it
// has none.
type storedClient struct {
	present  bool
	key      string
	capacity int64
}

// churnKeys records every key the admin API handed out, per client id.
type churnKeys struct {
	mu   sync.Mutex
	keys map[string][]string
}

func (k *churnKeys) add(id, key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys[id] = append(k.keys[id], key)
}

// adminCall sends one admin request and returns status and body; it
// fails nothing, so workers may use it.
func adminCall(hc *http.Client, method, url, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// churn runs the workers to the end and returns the keys they were given.
func churn(t *testing.T, hc *http.Client, ins []*instance) *churnKeys {
	t.Helper()
	keys := &churnKeys{keys: map[string][]string{}}
	var wg sync.WaitGroup
	for w := range churnWorkers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for range churnOps {
				in := ins[rng.IntN(len(ins))]
				id := fmt.Sprint("churn", rng.IntN(churnClients))
				if err := churnOp(hc, in, id, rng, keys); err != nil {
					assert.NoError(t, err)
					return
				}
			}
		})
	}
	wg.Wait()
	return keys
}

// churnOp makes one random admin change to id. Not found and conflict
// answers are expected; anything else but success is an error.
func churnOp(hc *http.Client, in *instance, id string, rng *rand.Rand, keys *churnKeys) error {
	base := "http://" + in.addr + "/clients"
	capacity := 5 + rng.IntN(50)
	var method, url, body string
	ok := http.StatusOK
	switch rng.IntN(4) {
	case 0:
		method, url, ok = http.MethodPost, base, http.StatusCreated
		body = fmt.Sprintf(`{"client_id":%q,"capacity":%d,"rate_per_sec":0.001}`, id, capacity)
	case 1:
		method, url, body = http.MethodPatch, base+"/"+id, fmt.Sprintf(`{"capacity":%d}`, capacity)
	case 2:
		method, url, ok = http.MethodDelete, base+"/"+id, http.StatusNoContent
	default:
		method, url = http.MethodPost, base+"/"+id+"/rotate-key"
	}
	code, got, err := adminCall(hc, method, url, body)
	switch {
	case err != nil:
		return err
	case code == ok:
		var c apiClient
		if code != http.StatusNoContent && json.Unmarshal([]byte(got), &c) == nil && c.APIKey != "" {
			keys.add(id, c.APIKey)
		}
		return nil
	case code == http.StatusNotFound || code == http.StatusConflict:
		return nil
	}
	return fmt.Errorf("%s %s: %d %s", method, url, code, got)
}

// viewOf reports what in shows of id: GET /clients/{id}, and, for every
// key ever given to id, the proxied status and X-RateLimit-Limit.
func viewOf(hc *http.Client, in *instance, id string, keys []string) (storedClient, map[string]string, error) {
	var got storedClient
	code, body, err := adminCall(hc, http.MethodGet, "http://"+in.addr+"/clients/"+id, "")
	if err != nil {
		return got, nil, err
	}
	if code == http.StatusOK {
		var c apiClient
		if err := json.Unmarshal([]byte(body), &c); err != nil {
			return got, nil, err
		}
		got = storedClient{present: true, key: c.APIKey, capacity: c.Capacity}
	}
	proxied := map[string]string{}
	for _, k := range keys {
		r, err := in.forward(hc, k, "/churn", nil)
		if err != nil {
			return got, nil, err
		}
		proxied[k] = strconv.Itoa(r.status)
		if r.status != http.StatusUnauthorized {
			proxied[k] = r.header.Get("X-RateLimit-Limit")
		}
	}
	return got, proxied, nil
}

// wantProxied is what proxied requests must see given the store's client.
func wantProxied(s storedClient, keys []string) map[string]string {
	want := map[string]string{}
	for _, k := range keys {
		want[k] = "401"
		if s.present && k == s.key {
			want[k] = strconv.FormatInt(s.capacity, 10)
		}
	}
	return want
}

// assertAgrees checks, within a few seconds (another instance hears of a
// change by notification), that in shows every client as the store has it.
func assertAgrees(t *testing.T, hc *http.Client, in *instance, keys *churnKeys, store func(id string) storedClient) {
	t.Helper()
	for i := range churnClients {
		id := fmt.Sprint("churn", i)
		ks := keys.keys[id]
		want := store(id)
		var got storedClient
		var proxied map[string]string
		deadline := time.Now().Add(5 * time.Second)
		for {
			var err error
			got, proxied, err = viewOf(hc, in, id, ks)
			require.NoError(t, err)
			if (got == want && assert.ObjectsAreEqual(wantProxied(want, ks), proxied)) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // polling a remote view
		}
		assert.Equal(t, want, got, "%s: GET /clients/{id} against the store", id)
		assert.Equal(t, wantProxied(want, ks), proxied, "%s: proxied requests against the store", id)
	}
}

func TestConcurrentAdminChangesLeaveStoreAdminAndProxyAgreeingEmbedded(t *testing.T) {
	rec := newRecorder(t)
	cfg := baseConfig(t, rec.url)
	in := start(t, cfg)
	hc := newHTTPClient(t)
	keys := churn(t, hc, []*instance{in})

	views := map[string]storedClient{}
	for i := range churnClients {
		id := fmt.Sprint("churn", i)
		got, _, err := viewOf(hc, in, id, nil)
		require.NoError(t, err)
		views[id] = got
	}
	// The proxied view against the GET view while running, then the GET
	// view against the file once stopped (it is locked while running).
	assertAgrees(t, hc, in, keys, func(id string) storedClient { return views[id] })
	require.NoError(t, in.stop())
	s, err := persist.OpenBolt(cfg["state_file"].(string), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer s.Close()
	for id, view := range views {
		c, err := s.GetClient(context.Background(), id)
		stored := storedClient{}
		if err == nil {
			stored = storedClient{present: true, key: c.APIKey, capacity: c.Capacity}
		}
		assert.Equal(t, stored, view, "%s: the store against GET", id)
	}
}

func TestConcurrentAdminChangesLeaveStoreAdminAndProxyAgreeingTwoInstances(t *testing.T) {
	rec := newRecorder(t)
	dsn := pgtest.New(t)
	cfg := baseConfig(t, rec.url)
	cfg["database_url"] = dsn
	a, b := start(t, cfg), start(t, cfg)
	hc := newHTTPClient(t)
	keys := churn(t, hc, []*instance{a, b})

	conn, err := pgx.Connect(t.Context(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	store := func(id string) storedClient {
		var s storedClient
		var key *string
		err := conn.QueryRow(t.Context(), `SELECT api_key, capacity FROM clients WHERE client_id = $1`, id).
			Scan(&key, &s.capacity)
		if err == pgx.ErrNoRows {
			return storedClient{}
		}
		require.NoError(t, err)
		s.present, s.key = true, *key
		return s
	}
	assertAgrees(t, hc, a, keys, store)
	assertAgrees(t, hc, b, keys, store)
}
