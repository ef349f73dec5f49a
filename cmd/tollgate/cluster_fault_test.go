package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// TestClusterKilledInstanceLosesOnlyItsLease: an instance killed with
// SIGKILL cannot hand its lease back. Nothing is over-admitted: the other
// instance gets at most what the row holds, and what it loses is the dead
// lease, read from client_leases before it expires: under-admission of
// one lease. Once lease_ttl has passed the dead lease stops counting, and
// the next renewal sweeps it: the row's cap is the whole capacity again
// (shown with a rate raised so that the row refills at once).
func TestClusterKilledInstanceLosesOnlyItsLease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	backend := newLiveBackend(t)
	dsn := pgtest.New(t)
	cfg := baseConfig(t, backend.url)
	cfg["database_url"] = dsn
	setRL(cfg, map[string]any{"lease_ttl": 2})
	survivor := start(t, cfg)
	p := spawn(t, cfg)
	victim := p.instance
	hc := newHTTPClient(t)
	const capacity = 20
	c := victim.createClient(t, hc, "crash", faultSlowRate, capacity)
	admitted := 0
	for range 8 {
		if r := victim.mustForward(t, hc, c.APIKey, "/before", nil); r.status == http.StatusOK {
			admitted++
		}
	}
	require.Equal(t, 8, admitted)
	// Killed once it has reported its spending: what it loses is then its
	// lease alone. (Admissions it made in safe mode and had not reported
	// yet would be lost to the row too: see the README.)
	eventually(t, func() bool { return victim.getClient(t, hc, "crash").Tokens <= capacity-8+0.5 },
		"the victim reported its admissions")
	require.NoError(t, p.kill())
	killed := time.Now()
	// Only the victim has served the client: the live leases are its own.
	dead := readOutageLedger(t, dsn, "crash")
	require.Len(t, dead.leases, 1, "the victim's lease, live")

	// At once, while the dead lease still counts.
	for range 2 * capacity {
		if r := survivor.mustForward(t, hc, c.APIKey, "/after", nil); r.status == http.StatusOK {
			admitted++
		}
	}
	t.Logf("kill -9: %d of %d admitted; the dead lease holds %.0f in client_leases", admitted, capacity, dead.leased())
	assert.LessOrEqual(t, admitted, capacity, "never over-admitted")
	assert.InDelta(t, float64(capacity)-dead.leased(), float64(admitted), 1,
		"what is lost is the dead lease: under-admission of one lease")

	conn, err := pgx.Connect(t.Context(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(t.Context()))
	live := func() int {
		var n int
		require.NoError(t, conn.QueryRow(t.Context(), `SELECT count(*) FROM client_leases
			WHERE client_id = 'crash' AND expires_at > clock_timestamp() AND tokens > 0`).Scan(&n))
		return n
	}
	eventually(t, func() bool { return live() == 0 }, "the dead lease expires")
	assert.Less(t, time.Since(killed), 2*time.Second+5*time.Second, "within lease_ttl, give or take the checks")

	// The row refills up to capacity minus the live leases: with the dead
	// one swept, up to the whole capacity. A rate of 1000/s refills it
	// within a renewal; each check sends one request, so that the
	// survivor renews.
	survivor.adminJSON(t, hc, http.MethodPatch, "/clients/crash", map[string]any{"rate_per_sec": 1000}, http.StatusOK, nil)
	var holders []string
	var last outageLedger
	eventually(t, func() bool {
		survivor.mustForward(t, hc, c.APIKey, "/refilled", nil)
		holders = holders[:0]
		require.NoError(t, conn.QueryRow(t.Context(), `SELECT array_agg(holder) FROM client_leases
			WHERE client_id = 'crash'`).Scan(&holders))
		last = readOutageLedger(t, dsn, "crash")
		return !slices.Contains(holders, deadHolder(dead)) && last.row+last.leased() >= capacity-1
	}, "the dead lease is swept and the row's cap is the whole capacity (holders %v, last %v)",
		faultLazy(func() string { return fmt.Sprint(holders) }), faultLazy(func() string { return fmt.Sprint(last) }))
	t.Logf("kill -9: after the sweep, row %.3f + leases %.3f of capacity %d", last.row, last.leased(), capacity)
	require.NoError(t, survivor.stop())
}

// deadHolder is the holder of a ledger's only lease.
func deadHolder(l outageLedger) string {
	for h := range l.leases {
		return h
	}
	return ""
}
