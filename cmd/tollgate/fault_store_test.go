package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// faultSlowRate refills so little during a test (well under 0.05 tokens) that
// a bucket's tokens are its capacity minus the requests it admitted:
// every admission is accounted for.
const faultSlowRate = 0.001

// faultClient is a client of a fault test and what it may admit.
type faultClient struct {
	id       string
	capacity int64
}

// TestFaultStoreOutageUnderLoad stops PostgreSQL for three seconds under
// steady load and starts it again (SPEC 5 "Store down"): cached clients
// keep being admitted, admin writes answer 503, /readyz turns 503 then
// 200, and every admission reaches the database once it is back. The
// load after it shows that the admin writes refused meanwhile (a PATCH, a
// rotation, a delete) did not happen either.
//
// The load stops at the restart and resumes once the change listener has
// reconnected and the saves have caught up: a bucket reloaded in between
// can resume from a row older than its latest state, the known bug that
// TestFaultReloadAfterResyncKeepsUnsavedAdmissions reproduces. Once it is
// fixed, the load can run straight through.
func TestFaultStoreOutageUnderLoad(t *testing.T) {
	pg := pgtest.StartServer(t)
	backend := newLiveBackend(t)
	cfg := baseConfig(t, backend.url)
	faultPatient(cfg)
	cfg["database_url"] = pg.DSN()
	cfg["shutdown_timeout"] = 3
	in := start(t, cfg)
	faultLogOnFailure(t, in)
	hc := newHTTPClient(t)

	clients := []faultClient{{"steady-0", 100_000}, {"steady-1", 100_000}, {"steady-2", 100_000}, {"tight", 40}}
	keys := make([]string, len(clients))
	for i, c := range clients {
		keys[i] = in.createClient(t, hc, c.id, faultSlowRate, c.capacity).APIKey
	}
	load := faultLoadOptions{workers: 4, every: 5 * time.Millisecond, keys: keys}
	ld := startFaultLoad(t, in, hc, load)
	ld.waitMore(t, 100, "load running before the outage")

	tm := faultStoreOutage(t, pg, in, ld)
	results := ld.all()
	whole := tallyFaults(results, nil)
	during := tallyFaults(results, faultBegunBetween(tm.stopped, tm.restart))
	t.Logf("store outage: %s", tm)
	t.Logf("store outage: before and during %s", whole)
	t.Logf("store outage: while down %s", during)
	assert.Zero(t, whole.failed+whole.serverErrors+whole.otherStatus, "no request lost or failed: %s", whole.firstFailure)
	assert.Positive(t, during.ok, "cached clients admitted while the store is down")
	assert.Positive(t, during.limited, "cached clients refused by their buckets while the store is down")
	failedSaves := faultFailedWrites(in)
	t.Logf("store outage: %d failed saves retried", failedSaves)
	assert.Positive(t, failedSaves, "saves failed during the outage")
	assertFaultStatesSaved(t, in, hc, pg.DSN(), faultExpectedTokens(clients, results))

	// Service goes on with buckets reloaded from the rows just checked.
	after := startFaultLoad(t, in, hc, load)
	after.waitMore(t, 100, "load served after the store is back")
	after.stop()
	got := tallyFaults(after.all(), nil)
	t.Logf("store outage: after %s", got)
	assert.Zero(t, got.failed+got.serverErrors+got.otherStatus, "no request lost or failed: %s", got.firstFailure)
	assertFaultStatesSaved(t, in, hc, pg.DSN(), faultExpectedTokens(clients, append(results, after.all()...)))
	assertFaultServedAsReceived(t, in, clients, append(results, after.all()...))

	// Nothing an admin write refused during the outage happened.
	code, _ := call(t, http.MethodGet, "http://"+in.addr+"/clients/during-outage", "", "")
	assert.Equal(t, http.StatusNotFound, code)
	require.NoError(t, in.stop())
}

// faultOutageTimes are the instants of a store outage.
type faultOutageTimes struct {
	down, stopped, restart, up, ready, resynced time.Time
}

func (tm faultOutageTimes) String() string {
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("stop took %s, down %s, start took %s; ready %s and listener resynced %s after the start",
		ms(tm.stopped.Sub(tm.down)), ms(tm.restart.Sub(tm.stopped)), ms(tm.up.Sub(tm.restart)),
		ms(tm.ready.Sub(tm.up)), ms(tm.resynced.Sub(tm.up)))
}

// faultStoreOutage stops the server for three seconds under ld, checks
// what must hold meanwhile, stops ld, and starts the server again. It
// returns once the instance is ready and its change listener has
// reconnected.
func faultStoreOutage(t *testing.T, pg *pgtest.Server, in *instance, ld *faultLoad) faultOutageTimes {
	t.Helper()
	var tm faultOutageTimes
	tm.down = time.Now()
	pg.Stop()
	tm.stopped = time.Now()
	outage := time.NewTimer(3 * time.Second) // the fault's length, not a wait for a condition
	eventually(t, func() bool { return faultReadyz(t, in) == http.StatusServiceUnavailable }, "/readyz turns 503")
	assertFaultAdminWritesRefused(t, in)
	ld.waitMore(t, 200, "cached clients admitted while the store is down")
	<-outage.C
	ld.stop()
	tm.restart = time.Now()
	pg.Start()
	tm.up = time.Now()
	eventually(t, func() bool { return faultReadyz(t, in) == http.StatusOK }, "/readyz turns 200")
	tm.ready = time.Now()
	// Its backoff has grown during the outage (up to 5 s between tries),
	// and a try may take a while on a busy machine.
	faultEventually(t, 30*time.Second, func() bool { return len(faultResyncs(in, true)) > 0 },
		"the change listener reconnects and resyncs")
	tm.resynced = time.Now()
	return tm
}

// faultExpectedTokens is each client's tokens by the admissions counted:
// capacity - admitted (faultSlowRate refills next to nothing).
func faultExpectedTokens(clients []faultClient, results []faultResult) map[string]float64 {
	want := make(map[string]float64, len(clients))
	for i, c := range clients {
		want[c.id] = float64(c.capacity - int64(tallyFaults(results, faultForKey(i)).ok))
	}
	return want
}

// assertFaultServedAsReceived compares the 200s Tollgate logged for each
// client with those the load received: none answered and lost on the way.
func assertFaultServedAsReceived(t *testing.T, in *instance, clients []faultClient, results []faultResult) {
	t.Helper()
	served := make(map[string]int)
	for _, l := range in.logs.lines("request") {
		if l["status"] == float64(http.StatusOK) {
			id, _ := l["client_id"].(string)
			served[id]++
		}
	}
	for i, c := range clients {
		assert.Equal(t, tallyFaults(results, faultForKey(i)).ok, served[c.id], "%s: 200s logged = 200s received", c.id)
	}
}

// TestFaultUncachedKeyWhileStoreDown sends a key that is indexed but not
// cached while the store hangs, then while it is stopped: a prompt 503
// "store unavailable", never a 401 and never a hang past request_timeout.
func TestFaultUncachedKeyWhileStoreDown(t *testing.T) {
	pg := pgtest.StartServer(t)
	proxy := newFaultProxy(t, pg.Addr())
	dsn, err := pgtest.WithAddr(pg.DSN(), proxy.port())
	require.NoError(t, err)
	backend := newLiveBackend(t)
	cfg := baseConfig(t, backend.url)
	cfg["database_url"] = dsn
	cfg["shutdown_timeout"] = 3
	faultPatient(cfg)
	const requestTimeout = time.Second
	setLB(cfg, map[string]any{"request_timeout": requestTimeout.Seconds()})
	hc := newHTTPClient(t)

	// Clients created through the admin API are cached at once: create
	// them on a first instance, so that the second only indexes them.
	first := start(t, cfg)
	cold := []string{
		first.createClient(t, hc, "cold-hung", 1000, 1000).APIKey,
		first.createClient(t, hc, "cold-stopped", 1000, 1000).APIKey,
	}
	require.NoError(t, first.stop())
	in := start(t, cfg)
	faultLogOnFailure(t, in)
	hot := in.createClient(t, hc, "hot", 1000, 1000).APIKey

	faults := []struct {
		name        string
		key         string
		break_, fix func()
	}{
		{"store hangs", cold[0], proxy.pause, proxy.resume},
		{"store stopped", cold[1], pg.Stop, pg.Start},
	}
	for _, f := range faults {
		f.break_()
		begun := time.Now()
		r := in.mustForward(t, hc, f.key, "/cold", nil)
		took := time.Since(begun)
		t.Logf("uncached key, %s: %d %q in %s", f.name, r.status, firstLine(r.body), took.Round(time.Millisecond))
		assert.Equal(t, http.StatusServiceUnavailable, r.status, "%s: %s", f.name, r.body)
		code, msg := jsonError(t, r)
		assert.Equal(t, http.StatusServiceUnavailable, code, f.name)
		assert.Equal(t, "store unavailable", msg, f.name)
		assert.Less(t, took, requestTimeout+2*time.Second, "%s: bounded by request_timeout, not a hang", f.name)

		assert.Equal(t, http.StatusOK, in.mustForward(t, hc, hot, "/hot", nil).status, "%s: a cached key is admitted", f.name)
		unknown := in.mustForward(t, hc, "no-such-key-0123456789abcdef", "/unknown", nil)
		assert.Equal(t, http.StatusUnauthorized, unknown.status, "%s: an unknown key is refused without the store", f.name)

		f.fix()
		eventually(t, func() bool { return in.mustForward(t, hc, f.key, "/cold", nil).status == http.StatusOK },
			"%s: the key works once the store is back", f.name)
	}
	require.NoError(t, in.stop())
}

// assertFaultAdminWritesRefused checks that every admin write answers 503 JSON
// while the store is down.
func assertFaultAdminWritesRefused(t *testing.T, in *instance) {
	t.Helper()
	base := "http://" + in.addr
	writes := []struct{ method, path, body string }{
		{http.MethodPost, "/clients", `{"client_id":"during-outage"}`},
		{http.MethodPatch, "/clients/steady-0", `{"capacity":5}`},
		{http.MethodPost, "/clients/steady-1/rotate-key", ""},
		{http.MethodDelete, "/clients/steady-2", ""},
	}
	for _, w := range writes {
		code, body := call(t, w.method, base+w.path, "", w.body)
		assert.Equal(t, http.StatusServiceUnavailable, code, "%s %s: %s", w.method, w.path, body)
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if assert.NoError(t, json.Unmarshal([]byte(body), &e), "%s %s: %s", w.method, w.path, body) {
			assert.Equal(t, http.StatusServiceUnavailable, e.Code)
			assert.Contains(t, e.Message, "store unavailable")
		}
	}
}

// faultReadyz returns the status of GET /readyz.
func faultReadyz(t *testing.T, in *instance) int {
	t.Helper()
	code, _ := call(t, http.MethodGet, "http://"+in.addr+"/readyz", "", "")
	return code
}

// faultStoredState is a bucket's row in PostgreSQL.
type faultStoredState struct {
	tokens     float64
	lastRefill time.Time
}

// faultStoredStates reads every client's saved bucket straight from the
// database.
func faultStoredStates(t *testing.T, dsn string) map[string]faultStoredState {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SELECT client_id, tokens, last_refill FROM clients")
	require.NoError(t, err)
	out := make(map[string]faultStoredState)
	for rows.Next() {
		var id string
		var s faultStoredState
		require.NoError(t, rows.Scan(&id, &s.tokens, &s.lastRefill))
		out[id] = s
	}
	require.NoError(t, rows.Err())
	return out
}

// assertFaultStatesSaved waits until every client's row in the database
// holds its in-memory bucket (GET /clients/{id}, brought to the same
// instant at faultSlowRate), and checks that bucket against the admissions the
// load counted: tokens = capacity - admitted.
func assertFaultStatesSaved(t *testing.T, in *instance, hc *http.Client, dsn string, want map[string]float64) {
	t.Helper()
	const epsilon = 0.01
	var mismatch string
	eventually(t, func() bool {
		rows := faultStoredStates(t, dsn)
		mismatch = ""
		for id := range want {
			live := in.getClient(t, hc, id)
			at, err := time.Parse(time.RFC3339Nano, live.LastRefill)
			require.NoError(t, err)
			row, ok := rows[id]
			projected := math.Min(float64(live.Capacity), row.tokens+faultSlowRate*at.Sub(row.lastRefill).Seconds())
			if !ok || math.Abs(projected-live.Tokens) > epsilon {
				mismatch = id
				return false
			}
		}
		return true
	}, "every bucket state reaches the database (first mismatch: %s)", faultLazy(func() string { return mismatch }))
	rows := faultStoredStates(t, dsn)
	for id, tokens := range want {
		live := in.getClient(t, hc, id)
		t.Logf("bucket %s: admitted-accounting %.0f, in memory %.3f, in database %.3f", id, tokens, live.Tokens, rows[id].tokens)
		assert.InDelta(t, tokens, live.Tokens, 0.1, "%s: tokens = capacity - admitted, no admission lost", id)
		assert.InDelta(t, tokens, rows[id].tokens, 0.1, "%s: the database has it", id)
	}
}

// faultLazy formats as its result at the time a failure message is written.
type faultLazy func() string

func (f faultLazy) String() string { return f() }

// faultResyncs returns the key index resyncs an instance logged, those
// that dropped its cache or those that did not.
func faultResyncs(in *instance, dropCache bool) []map[string]any {
	var out []map[string]any
	for _, l := range in.logs.lines("key index resynced") {
		if l["drop_cache"] == dropCache {
			out = append(out, l)
		}
	}
	return out
}
