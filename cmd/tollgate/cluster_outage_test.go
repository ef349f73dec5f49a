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

// outageKnown waits until every instance knows key, and returns how many
// of its probes were admitted, to be counted with the loads' admissions.
// A client created on one instance reaches the others' key indexes
// through a notification, within a second (SPEC 6): until then they
// answer 401.
func outageKnown(t *testing.T, ins []*instance, hc *http.Client, key string) int {
	t.Helper()
	admitted := 0
	for i, in := range ins {
		eventually(t, func() bool {
			r := in.mustForward(t, hc, key, "/known", nil)
			if r.status == http.StatusOK {
				admitted++
			}
			return r.status != http.StatusUnauthorized
		}, "instance %d knows the key", i)
	}
	return admitted
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
	probes := outageKnown(t, []*instance{a, b}, hc, c.APIKey)

	loads := outageLoads(t, []*instance{a, b}, hc, c.APIKey, 10*time.Millisecond)
	outageWaitEach(t, loads, 50, "both instances serve the client")
	outageStop(loads)
	results := outageAll(loads)
	admitted := float64(probes + tallyFaults(results, nil).ok)

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

// TestClusterStoreOutageUnderLoad stops PostgreSQL for 5 s while two
// instances serve one client over its limit, once per store_down_policy
// that admits anything but from leases ("open" admits all and needs no
// test of a bound).
func TestClusterStoreOutageUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs instances for seconds")
	}
	pg := pgtest.StartServer(t)
	backend := newLiveBackend(t)
	config := func(t *testing.T, policy string) map[string]any {
		cfg := baseConfig(t, backend.url)
		cfg["database_url"] = pg.DSN()
		cfg["shutdown_timeout"] = 3
		faultPatient(cfg)
		setRL(cfg, map[string]any{"store_down_policy": policy})
		return cfg
	}
	t.Run("safe", func(t *testing.T) { outageSafe(t, pg, config(t, "safe")) })
	t.Run("closed", func(t *testing.T) { outageClosed(t, pg, config(t, "closed")) })
}

// outageSafe: with store_down_policy "safe" each instance spends its lease,
// then admits from its share of the bucket (1/N of the rate and capacity,
// starting from its share of the row as it last saw it). SPEC 9 bounds
// the over-admission during an outage by the shares' bursts plus N
// leases; with a rate next to nothing, that makes the admissions while
// the store is down at most
//
//	capacity (the shares' bursts, capacity/N each) + rate·T
//	+ the tokens on lease when it went down (N leases) + N (rounding).
//
// Once the store is back, what safe mode admitted is charged to the row
// as debt: row + leases + admitted = capacity exactly. No request hangs
// on the dead database: a request waits for a renewal 20 ms at most, so
// every answer while it is down comes well within a second on a loaded
// machine; the instances' counts of decisions that waited are logged.
func outageSafe(t *testing.T, pg *pgtest.Server, cfg map[string]any) {
	ins := []*instance{start(t, cfg), start(t, cfg)}
	for _, in := range ins {
		faultLogOnFailure(t, in)
	}
	hc := newHTTPClient(t)
	const (
		id       = "outage-safe"
		capacity = 300
	)
	c := ins[0].createClient(t, hc, id, faultSlowRate, capacity)
	probes := outageKnown(t, ins, hc, c.APIKey)
	// 50 requests/s per instance: leases of about a second of that leave
	// most of the bucket in the row, for the shares.
	loads := outageLoads(t, ins, hc, c.APIKey, 20*time.Millisecond)
	outageWaitEach(t, loads, 10, "both instances serve the client")

	w := outageStore(t, pg, ins, loads, id, 5*time.Second)
	results := outageAll(loads)
	during := tallyFaults(results, w.during)
	p99, longest := outageLatencies(slices.DeleteFunc(slices.Clone(results), func(r faultResult) bool { return !w.during(r) }))
	t.Logf("safe: %s", w)
	t.Logf("safe: whole run %s", tallyFaults(results, nil))
	t.Logf("safe: while down %s; p99 %s", during, p99.Round(time.Millisecond))
	for i, l := range loads {
		t.Logf("safe: instance %d while down %s", i, tallyFaults(l.all(), w.during))
	}
	all := tallyFaults(results, nil)
	assert.Zero(t, all.failed+all.serverErrors+all.otherStatus, "every request answered 200 or 429: %s", all.firstFailure)
	assert.Positive(t, during.ok, "admitted while the store is down")
	assert.Positive(t, during.limited, "the shares run out: the load is over the limit")
	bound := capacity + faultSlowRate*w.restart.Sub(w.down).Seconds() + w.leased + float64(len(ins))
	admitted := probes + all.ok
	t.Logf("safe: admitted while down %d, bound %.1f; whole run admitted %d of capacity %d",
		during.ok, bound, admitted, capacity)
	assert.LessOrEqual(t, float64(during.ok), bound, "over-admission within the shares' bursts plus N leases")
	assert.Less(t, longest, time.Second, "no request hangs on the dead database")

	// Once the debts are charged, the row is below zero by what was
	// admitted, or leased since, beyond one bucket: refill pays it back
	// before granting anything. The first instance to report its debt
	// may be granted a lease from tokens another's share has spent and
	// not yet reported: that lease is over-admission too.
	settled := outageExact(t, pg.DSN(), id, capacity, admitted)
	over := max(0, -settled.row)
	t.Logf("safe: over-admission once charged %.1f (admitted %d + leased since %.0f - capacity %d), bound %.1f",
		over, admitted, settled.leased(), capacity, bound)
	assert.LessOrEqual(t, over, bound, "over-admission within the shares' bursts plus N leases")

	// Service goes on, every admission charged; the bucket is spent, so
	// the load after the outage is mostly refused.
	after := outageAfter(t, ins, hc, c.APIKey, outageAfterOptions{every: 20 * time.Millisecond, w: w})
	got := tallyFaults(after, nil)
	assert.Zero(t, got.serverErrors, "no 503 in safe mode: %s", got.firstFailure)
	outageExact(t, pg.DSN(), id, capacity, probes+tallyFaults(append(results, after...), nil).ok)
	for i, in := range ins {
		require.NoError(t, in.stop())
		t.Logf("safe: instance %d closing line %v", i, outageHandedBack(t, in))
	}
}

// outageClosed: with store_down_policy "closed" each instance spends its
// lease, then answers 503 until the store is back. Nothing is admitted
// but from leases: once the store is back, row + leases + admitted =
// capacity exactly, with no debt.
func outageClosed(t *testing.T, pg *pgtest.Server, cfg map[string]any) {
	ins := []*instance{start(t, cfg), start(t, cfg)}
	for _, in := range ins {
		faultLogOnFailure(t, in)
	}
	hc := newHTTPClient(t)
	const (
		id       = "outage-closed"
		capacity = 100_000
	)
	c := ins[0].createClient(t, hc, id, faultSlowRate, capacity)
	probes := outageKnown(t, ins, hc, c.APIKey)
	loads := outageLoads(t, ins, hc, c.APIKey, 10*time.Millisecond)
	outageWaitEach(t, loads, 20, "both instances serve the client")

	w := outageStore(t, pg, ins, loads, id, 2*time.Second)
	results := outageAll(loads)
	t.Logf("closed: %s", w)
	for i, l := range loads {
		rs := l.all()
		d := tallyFaults(rs, w.during)
		_, longest := outageLatencies(slices.DeleteFunc(slices.Clone(rs), func(r faultResult) bool { return !w.during(r) }))
		t.Logf("closed: instance %d while down %s", i, d)
		assert.Positive(t, d.serverErrors, "instance %d: 503 once its lease is spent", i)
		assert.Less(t, longest, time.Second, "instance %d: no request hangs on the dead database", i)
		outside := 0
		for _, r := range rs {
			if r.err == nil && r.status >= 500 {
				assert.Equal(t, http.StatusServiceUnavailable, r.status, "instance %d: %s", i, r.failure)
				assert.Contains(t, r.failure, "store unavailable", "instance %d", i)
				if !w.during(r) {
					outside++
				}
			}
		}
		// A renewal that takes over 20 ms counts as the store being
		// down (README "Running several instances"): under -race on a
		// busy machine an instance's first renewals may.
		t.Logf("closed: instance %d: %d 503s with the store up (renewals over 20 ms)", i, outside)
	}
	all := tallyFaults(results, nil)
	assert.Zero(t, all.failed+all.otherStatus, "every request answered: %s", all)
	t.Logf("closed: admitted while down %d, on lease at the stop %.0f", tallyFaults(results, w.during).ok, w.leased)
	outageExact(t, pg.DSN(), id, capacity, probes+all.ok)

	after := outageAfter(t, ins, hc, c.APIKey, outageAfterOptions{every: 10 * time.Millisecond, minAdmitted: 10, w: w})
	outageExact(t, pg.DSN(), id, capacity, probes+tallyFaults(append(results, after...), nil).ok)
	for _, in := range ins {
		require.NoError(t, in.stop())
	}
}
