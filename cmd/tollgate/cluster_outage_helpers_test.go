package main

// Helpers of the cluster fault tests (cluster_outage_test.go,
// cluster_fault_test.go): the database's books of a shared bucket, loads
// spread over instances, and the bounds they are checked against.

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

// outageKnown waits until every instance knows key, and returns its
// probes, to be counted with the loads' requests. A client created on one
// instance reaches the others' key indexes through a notification, within
// a second (SPEC 6): until then they answer 401.
func outageKnown(t *testing.T, ins []*instance, hc *http.Client, key string) []faultResult {
	t.Helper()
	var probes []faultResult
	for i, in := range ins {
		eventually(t, func() bool {
			p := faultResult{begun: time.Now()}
			r := in.mustForward(t, hc, key, "/known", nil)
			p.ended, p.status = time.Now(), r.status
			if r.status != http.StatusUnauthorized {
				probes = append(probes, p)
				return true
			}
			return false
		}, "instance %d knows the key", i)
	}
	return probes
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

// outageWaitEach waits until every load has answered n more requests
// than when it was called (faultLoad.waitMore for all at once).
func outageWaitEach(t *testing.T, loads []*faultLoad, n int, what string) {
	t.Helper()
	from := make([]int, len(loads))
	for i, l := range loads {
		from[i] = l.count()
	}
	faultEventually(t, 30*time.Second, func() bool {
		for i, l := range loads {
			if l.count() < from[i]+n {
				return false
			}
		}
		return true
	}, "%s; so far %s", what, faultLazy(func() string { return tallyFaults(outageAll(loads), nil).String() }))
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

// outageWindow is one store outage under load: the instants, and the
// leases booked just before the database went away.
type outageWindow struct {
	down, stopped, restart, up time.Time
	leased                     float64
}

func (w outageWindow) String() string {
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("stop took %s, down %s, start took %s; %.0f tokens on lease at the stop",
		ms(w.stopped.Sub(w.down)), ms(w.restart.Sub(w.stopped)), ms(w.up.Sub(w.restart)), w.leased)
}

// during keeps the requests begun while the database was going down or
// down.
func (w outageWindow) during(r faultResult) bool { return faultBegunBetween(w.down, w.restart)(r) }

// outageStore stops the server for d under loads, checks that every
// instance turns unready meanwhile and that the loads go on being
// answered, stops the loads, and starts the server again. It returns once
// every instance is ready again.
func outageStore(t *testing.T, pg *pgtest.Server, ins []*instance, loads []*faultLoad, id string, d time.Duration) outageWindow {
	t.Helper()
	var w outageWindow
	w.leased = readOutageLedger(t, pg.DSN(), id).leased()
	w.down = time.Now()
	pg.Stop()
	w.stopped = time.Now()
	outage := time.NewTimer(d) // the fault's length, not a wait for a condition
	for _, in := range ins {
		eventually(t, func() bool { return faultReadyz(t, in) == http.StatusServiceUnavailable }, "/readyz turns 503")
	}
	outageWaitEach(t, loads, 20, "requests answered while the store is down")
	<-outage.C
	outageStop(loads)
	w.restart = time.Now()
	pg.Start()
	w.up = time.Now()
	for _, in := range ins {
		faultEventually(t, 30*time.Second, func() bool { return faultReadyz(t, in) == http.StatusOK }, "/readyz turns 200")
	}
	return w
}

// outageExact waits until every admission is charged to the row: row +
// live leases + admitted = capacity (faultSlowRate refills next to
// nothing). Safe mode's admissions reach the row as debt with the first
// renewal that goes through.
func outageExact(t *testing.T, dsn, id string, capacity int64, admitted int) outageLedger {
	t.Helper()
	var last outageLedger
	eventually(t, func() bool {
		last = readOutageLedger(t, dsn, id)
		sum := last.row + last.leased() + float64(admitted)
		return sum > float64(capacity)-0.1 && sum < float64(capacity)+0.1
	}, "row + leases + admitted = capacity: every admission charged (last: %v)",
		faultLazy(func() string { return fmt.Sprintf("row %.3f leases %v admitted %d", last.row, last.leases, admitted) }))
	t.Logf("%s: row %.3f + leases %.3f + admitted %d = %d", id, last.row, last.leased(), admitted, capacity)
	return last
}

// outageLatencies are the p99 and the longest answer among results.
func outageLatencies(results []faultResult) (p99, longest time.Duration) {
	ds := make([]time.Duration, 0, len(results))
	for _, r := range results {
		ds = append(ds, r.ended.Sub(r.begun))
	}
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)*99/100], ds[len(ds)-1]
}

// outageAfter runs a load on every instance once the store is back, until
// each has answered 20 requests and admitted minAdmitted, and returns the
// results. An instance may answer 503 (policy closed) for a moment after
// /readyz turns 200: it leaves store-down mode with its first renewal
// that goes through, and retries one every 250 ms. Once it admits again,
// it answers no 503.
func outageAfter(t *testing.T, ins []*instance, hc *http.Client, key string, o outageAfterOptions) []faultResult {
	t.Helper()
	loads := outageLoads(t, ins, hc, key, o.every)
	for i, l := range loads {
		faultEventually(t, 30*time.Second, func() bool {
			got := tallyFaults(l.all(), nil)
			return got.sent >= 20 && got.ok >= o.minAdmitted
		}, "instance %d serves again once the store is back", i)
	}
	outageStop(loads)
	var out []faultResult
	for i, l := range loads {
		rs := l.all()
		var first time.Time
		for _, r := range rs {
			if r.err == nil && r.status == http.StatusOK && (first.IsZero() || r.ended.Before(first)) {
				first = r.ended
			}
		}
		got := tallyFaults(rs, nil)
		late := tallyFaults(rs, func(r faultResult) bool { return !first.IsZero() && r.begun.After(first) })
		since := "never"
		if !first.IsZero() {
			since = first.Sub(o.w.up).Round(time.Millisecond).String() + " after the server started"
		}
		t.Logf("after the restart, instance %d: %s; first admitted %s", i, got, since)
		assert.Zero(t, got.failed+got.otherStatus, "instance %d: every request answered: %s", i, got.firstFailure)
		assert.Zero(t, late.serverErrors, "instance %d: no 503 once it admits again", i)
		out = append(out, rs...)
	}
	return out
}

type outageAfterOptions struct {
	every       time.Duration
	minAdmitted int
	w           outageWindow
}

// outageSpan is the time from the first request sent to the last answer.
func outageSpan(results []faultResult) time.Duration {
	var first, last time.Time
	for _, r := range results {
		if first.IsZero() || r.begun.Before(first) {
			first = r.begun
		}
		last = later(last, r.ended)
	}
	return last.Sub(first)
}

// later is the later of two times.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
