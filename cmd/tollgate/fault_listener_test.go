package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// TestFaultLostListenerReconnectsAndResyncs terminates the change
// listeners' sessions on the server while admin changes are made on
// instance A: instance B may miss their notifications, so it must
// reconnect, resync its key index and drop its cached clients, and end up
// applying every change.
func TestFaultLostListenerReconnectsAndResyncs(t *testing.T) {
	backend := newLiveBackend(t)
	dsn := pgtest.New(t)
	cfg := baseConfig(t, backend.url)
	cfg["database_url"] = dsn
	faultPatient(cfg)
	a, b := start(t, cfg), start(t, cfg)
	faultLogOnFailure(t, a)
	faultLogOnFailure(t, b)
	hc := newHTTPClient(t)
	status := func(in *instance, key string) int { return in.mustForward(t, hc, key, "/x", nil).status }

	patched := a.createClient(t, hc, "patched", 1000, 1000)
	deleted := a.createClient(t, hc, "deleted", 1000, 1000)
	rotated := a.createClient(t, hc, "rotated", 1000, 1000)
	for _, c := range []apiClient{patched, deleted, rotated} {
		eventually(t, func() bool { return status(b, c.APIKey) == http.StatusOK }, "%s cached on B", c.ClientID)
	}
	require.Empty(t, faultResyncs(b, true), "no reconnect yet")

	killed := faultTerminateListeners(t, dsn)
	require.Equal(t, 2, killed, "one listener per instance")
	lost := time.Now()
	// B's listener reconnects after at least 100 ms: these changes most
	// likely happen while nobody on B listens.
	fresh := a.createClient(t, hc, "fresh", 1000, 1000)
	a.adminJSON(t, hc, http.MethodPatch, "/clients/patched", map[string]any{"capacity": 7}, http.StatusOK, nil)
	a.adminJSON(t, hc, http.MethodDelete, "/clients/deleted", nil, http.StatusNoContent, nil)
	var newKey apiClient
	a.adminJSON(t, hc, http.MethodPost, "/clients/rotated/rotate-key", nil, http.StatusOK, &newKey)
	changed := time.Since(lost)

	eventually(t, func() bool {
		return status(b, fresh.APIKey) == http.StatusOK &&
			b.mustForward(t, hc, patched.APIKey, "/x", nil).header.Get("X-RateLimit-Limit") == "7" &&
			status(b, deleted.APIKey) == http.StatusUnauthorized &&
			status(b, rotated.APIKey) == http.StatusUnauthorized &&
			status(b, newKey.APIKey) == http.StatusOK
	}, "B applies every change made while its listener was lost")
	converged := time.Since(lost)
	t.Logf("lost listener: changes made %s after the kill, B converged %s after it; B logged %d reconnect(s), %d cache-dropping resync(s)",
		changed.Round(time.Millisecond), converged.Round(time.Millisecond),
		len(b.logs.lines("change listener lost; reconnecting")), len(faultResyncs(b, true)))
	assert.Less(t, converged, 5*time.Second, "reconnect backoff plus resync take a few seconds at most")
	assert.NotEmpty(t, b.logs.lines("change listener lost; reconnecting"))
	assert.NotEmpty(t, faultResyncs(b, true), "after a reconnect B resyncs and drops its cache")

	require.NoError(t, a.stop())
	require.NoError(t, b.stop())
}

// faultTerminateListeners ends the change listeners' sessions on the database
// of dsn, as a failover or an operator's pg_terminate_backend would, and
// returns how many it ended. Other tests' databases on the same server
// are left alone.
func faultTerminateListeners(t *testing.T, dsn string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	// Selected first and terminated one by one: within one query the
	// server may call pg_terminate_backend before the filters apply.
	rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity
		WHERE application_name = 'tollgate-listener' AND datname = current_database()`)
	require.NoError(t, err)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	require.NoError(t, err)
	for _, pid := range pids {
		var ok bool
		require.NoError(t, conn.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&ok))
		require.True(t, ok, "terminate listener session %d", pid)
	}
	return len(pids)
}
