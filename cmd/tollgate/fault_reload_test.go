package main

import (
	"context"
	"net/http"

	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// TestFaultReloadAfterResyncKeepsUnsavedAdmissions: a bucket whose latest
// state the persister holds but could not save yet (a save failed or is
// in flight) is dropped from the cache by a resync after a lost change
// listener; its next request reloads it from the store. It must resume
// from its latest state, not from the older row, or the admissions made
// since the last successful save are handed out again.
//
// It reproduces deterministically: a row lock makes the persister's
// saves of the client time out while reads still go through.
func TestFaultReloadAfterResyncKeepsUnsavedAdmissions(t *testing.T) {
	backend := newLiveBackend(t)
	dsn := pgtest.New(t)
	cfg := baseConfig(t, backend.url)
	cfg["database_url"] = dsn
	faultPatient(cfg)
	setRL(cfg, map[string]any{"save_state_interval": 0.2})
	in := start(t, cfg)
	hc := newHTTPClient(t)
	const capacity = 1000
	c := in.createClient(t, hc, "reloaded", faultSlowRate, capacity)
	spend := func(n int) reply {
		var r reply
		for range n {
			r = in.mustForward(t, hc, c.APIKey, "/spend", nil)
			require.Equal(t, http.StatusOK, r.status, r.body)
		}
		return r
	}
	spend(10)
	eventually(t, func() bool { return faultStoredStates(t, dsn)[c.ClientID].tokens < capacity-9.5 }, "10 admissions saved")

	// Hold the row: the persister's next saves time out, reads still work.
	ctx := t.Context()
	lock, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer lock.Close(context.WithoutCancel(ctx))
	tx, err := lock.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	_, err = tx.Exec(ctx, "SELECT 1 FROM clients WHERE client_id = $1 FOR UPDATE", c.ClientID)
	require.NoError(t, err)

	failed := faultFailedWrites(in)
	spend(5) // 985 left, only in memory and in the persister's hands
	eventually(t, func() bool { return faultFailedWrites(in) > failed }, "a save of the 5 admissions failed")

	resyncs := len(faultResyncs(in, true))
	require.Equal(t, 1, faultTerminateListeners(t, dsn))
	eventually(t, func() bool { return len(faultResyncs(in, true)) > resyncs }, "the listener reconnected and dropped the cache")

	r := spend(1) // reloads the bucket
	assert.Equal(t, strconv.Itoa(capacity-16), r.header.Get("X-RateLimit-Remaining"),
		"the reloaded bucket resumes from 984 tokens, not from the 990 of the last successful save")
	require.NoError(t, tx.Rollback(ctx))
	// Once the persister catches up, the row holds every admission too.
	assertFaultStatesSaved(t, in, hc, dsn, map[string]float64{c.ClientID: capacity - 16})
	require.NoError(t, in.stop())
}
