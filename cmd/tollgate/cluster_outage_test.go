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

// Issue 13's faults with several instances sharing one bucket (SPEC 9):
// a graceful stop, the database stopped under load, an instance joining
// mid-run, admin changes under load. The kill -9 case is in
// cluster_fault_test.go. Every client of these tests is served by every
// instance at once, through one faultLoad per instance.

// outageLedger is a client's tokens as the database books them: the row,
// and the live leases by holder.
type outageLedger struct {
	row    float64
	leases map[string]float64
}

// leased is the tokens out on live leases.
func (l outageLedger) leased() float64 {
	var n float64
	for _, v := range l.leases {
		n += v
	}
	return n
}

// readOutageLedger reads a client's row and live leases straight from the
// database. With faultSlowRate the row's refill since its last renewal is
// negligible, so row + leases + admitted = capacity when every admission
// has been charged.
func readOutageLedger(t *testing.T, dsn, id string) outageLedger {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	l := outageLedger{leases: map[string]float64{}}
	require.NoError(t, conn.QueryRow(ctx, `SELECT tokens FROM clients WHERE client_id = $1`, id).Scan(&l.row))
	rows, err := conn.Query(ctx, `SELECT holder, tokens FROM client_leases
		WHERE client_id = $1 AND expires_at > clock_timestamp()`, id)
	require.NoError(t, err)
	var (
		holder string
		tokens float64
	)
	_, err = pgx.ForEachRow(rows, []any{&holder, &tokens}, func() error {
		l.leases[holder] = tokens
		return nil
	})
	require.NoError(t, err)
	return l
}

// outageHolder is the name an instance's leases carry in client_leases,
// from its "leasing" log line.
func outageHolder(t *testing.T, in *instance) string {
	t.Helper()
	var holder string
	eventually(t, func() bool {
		for _, l := range in.logs.lines("leasing") {
			holder, _ = l["holder"].(string)
		}
		return holder != ""
	}, "the instance logs its lease holder")
	return holder
}

// outageLoads starts one load per instance on key, one request every
// `every` each.
func outageLoads(t *testing.T, ins []*instance, hc *http.Client, key string, every time.Duration) []*faultLoad {
	t.Helper()
	loads := make([]*faultLoad, len(ins))
	for i, in := range ins {
		loads[i] = startFaultLoad(t, in, hc, faultLoadOptions{workers: 1, every: every, keys: []string{key}})
	}
	return loads
}

// outageStop stops every load.
func outageStop(loads []*faultLoad) {
	for _, l := range loads {
		l.stop()
	}
}

// outageAll is every load's results.
func outageAll(loads []*faultLoad) []faultResult {
	var out []faultResult
	for _, l := range loads {
		out = append(out, l.all()...)
	}
	return out
}

// outageWaitEach waits until every load has n more requests answered.
func outageWaitEach(t *testing.T, loads []*faultLoad, n int, what string) {
	t.Helper()
	for _, l := range loads {
		l.waitMore(t, n, what)
	}
}

// outageWorstExcess is the worst excess of admissions over one bucket's
// bound, capacity + rate·T + n, over sliding windows of each length T
// among the results kept. A decision happens between send and answer:
// windows are taken on answer times and widened by the slowest answer.
func outageWorstExcess(results []faultResult, keep func(faultResult) bool, capacity, rate float64, n int,
	windows []time.Duration) float64 {
	var times []time.Time
	var slowest time.Duration
	for _, r := range results {
		if keep != nil && !keep(r) {
			continue
		}
		slowest = max(slowest, r.ended.Sub(r.begun))
		if r.err == nil && r.status == http.StatusOK {
			times = append(times, r.ended)
		}
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	worst := -capacity - float64(n)
	for _, w := range windows {
		bound := capacity + rate*(w+slowest).Seconds() + float64(n)
		j := 0
		for i := range times {
			for j < len(times) && times[j].Sub(times[i]) <= w {
				j++
			}
			worst = max(worst, float64(j-i)-bound)
		}
	}
	return worst
}

// outageHandedBack is an instance's closing "leases handed back" line:
// how many leases it handed back, and its decisions and those that waited
// for a renewal.
func outageHandedBack(t *testing.T, in *instance) map[string]any {
	t.Helper()
	lines := in.logs.lines("leases handed back")
	require.Len(t, lines, 1, "the instance handed its leases back on stopping")
	return lines[0]
}

// TestClusterGracefulStopHandsLeasesBackAtOnce: two instances serve one
// client; one stops the way SIGTERM stops it (start's stop cancels run's
// context, as main's signal.NotifyContext does). Once stop has returned,
// its leases are in the row already: none of its lease rows holds a
// token, and nothing it held is missing from row + leases + admitted. The
// other instance's lease as booked may still count tokens it has spent
// and not reported yet; once it has, the accounting is exact.
func TestClusterGracefulStopHandsLeasesBackAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs instances for seconds")
	}
	backend := newLiveBackend(t)
	dsn := pgtest.New(t)
	cfg := baseConfig(t, backend.url)
	cfg["database_url"] = dsn
	faultPatient(cfg)
	a, b := start(t, cfg), start(t, cfg)
	faultLogOnFailure(t, a)
	holderA := outageHolder(t, a)
	hc := newHTTPClient(t)
	const capacity = 1000
	c := a.createClient(t, hc, "handback", faultSlowRate, capacity)

	loads := outageLoads(t, []*instance{a, b}, hc, c.APIKey, 10*time.Millisecond)
	outageWaitEach(t, loads, 50, "both instances serve the client")
	outageStop(loads)
	results := outageAll(loads)
	admitted := float64(tallyFaults(results, nil).ok)

	// Within a second of its last request, so it has not handed its lease
	// back for idleness yet.
	before := readOutageLedger(t, dsn, "handback")
	begun := time.Now()
	require.NoError(t, a.stop())
	took := time.Since(begun)
	after := readOutageLedger(t, dsn, "handback")
	t.Logf("graceful stop: %s; took %s; admitted %.0f of %d; before: row %.3f leases %v; after: row %.3f leases %v",
		tallyFaults(results, nil), took.Round(time.Millisecond), admitted, capacity,
		before.row, before.leases, after.row, after.leases)
	t.Logf("graceful stop: %v", outageHandedBack(t, a))

	require.Positive(t, before.leases[holderA], "the stopping instance held a lease")
	assert.Zero(t, after.leases[holderA], "its lease rows hold no token once stop returns")
	assert.GreaterOrEqual(t, after.row+after.leased()+admitted, float64(capacity)-0.1,
		"its unspent tokens are in the row at once")
	var sum float64
	eventually(t, func() bool {
		l := readOutageLedger(t, dsn, "handback")
		sum = l.row + l.leased() + admitted
		return sum > capacity-0.1 && sum < capacity+0.1
	}, "row + leases + admitted = capacity once the other instance reported (last: %v)",
		faultLazy(func() string { return fmt.Sprintf("%.3f", sum) }))
	all := tallyFaults(results, nil)
	assert.Equal(t, all.sent, all.ok+all.limited, "every request answered 200 or 429: %s", all.firstFailure)
	require.NoError(t, b.stop())
}
