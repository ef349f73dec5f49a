package main

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// TestClusterBench is make bench's cluster part (BENCH_PART=cluster, see
// scripts/cluster-bench.sh), not a test: it runs only with CLUSTER_BENCH=1.
// For N = 1, 2, 4 Tollgate processes on one database, each load pattern
// and offered load, it prints admitted, the single-bucket bound, the worst
// 1 s window's excess over it, utilisation against one bucket, database
// statements per second, p99 latency and the decisions that waited on
// the database. Each run has fresh processes and a fresh database (a
// subtest, so both go at its end), so that the processes' closing lines
// count that run alone.
func TestClusterBench(t *testing.T) {
	if os.Getenv("CLUSTER_BENCH") != "1" {
		t.Skip("the cluster bench: CLUSTER_BENCH=1 (make bench BENCH_PART=cluster)")
	}
	const (
		capacity = 50
		rate     = 50.0
	)
	run := 3 * time.Second
	if d, err := time.ParseDuration(os.Getenv("CLUSTER_BENCH_RUN")); err == nil {
		run = d
	}
	backend := newLiveBackend(t)
	fmt.Printf("| N | pattern | load | offered | admitted | bound | worst 1 s window vs bound | utilisation | statements/s | p99 | waited on db |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, n := range []int{1, 2, 4} {
		for _, p := range clusterPatterns {
			for _, load := range []float64{0.5, 2, 10} {
				if n == 1 && p.name != "uniform" {
					continue // one instance: every pattern is the same
				}
				t.Run(fmt.Sprintf("N=%d_%s_%gx", n, p.name, load), func(t *testing.T) {
					clusterBenchRun(t, backend.url, n, p, load, capacity, rate, run)
				})
			}
		}
	}
}

func clusterBenchRun(t *testing.T, backendURL string, n int, p clusterPattern,
	load float64, capacity int64, rate float64, run time.Duration) {
	ps, ins := clusterProcs(t, clusterConfig(t, backendURL, pgtest.New(t)), n)
	hc := newHTTPClient(t)
	c := ins[0].createClient(t, hc, "bench", rate, capacity)
	as := clusterRun(t, ins, c.APIKey, load*rate, run, p)
	worst, util := clusterCheck(as, float64(capacity), rate, n, []time.Duration{time.Second})
	stmts, decisions, waited := clusterLeaseStats(t, ps)
	if o := otherAnswers(as); o != "" {
		t.Logf("%s %gx:%s", p.name, load, o)
	}
	if worst > 0 {
		t.Logf("over the bound:\n%s", clusterTimeline(as, n, 250*time.Millisecond))
		for i, p := range ps {
			for _, l := range p.troubles() {
				t.Logf("instance %d: %s", i, l)
			}
		}
	}
	lat := make([]time.Duration, len(as))
	for i, a := range as {
		lat[i] = a.answered.Sub(a.sent)
	}
	slices.Sort(lat)
	bound := float64(capacity) + rate*run.Seconds() + float64(n)
	fmt.Printf("| %d | %s | %gx | %d | %d | %.0f | %+.1f | %.3f | %.1f | %s | %.0f of %.0f |\n",
		n, p.name, load, len(as), admitted(as), bound, worst, util, stmts/run.Seconds(),
		lat[len(lat)*99/100].Round(100*time.Microsecond), waited, decisions)
}
