package main

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// clusterPatterns are the load patterns of the cluster bench: each
// instance's part of the load at a time.
var clusterPatterns = []struct {
	name  string
	share func(i, n int, since time.Duration) float64
}{
	{"uniform", func(i, n int, _ time.Duration) float64 { return 1 / float64(n) }},
	{"90-10", func(i, n int, _ time.Duration) float64 {
		switch {
		case n == 1:
			return 1
		case i == 0:
			return 0.9
		}
		return 0.1 / float64(n-1)
	}},
	{"all-to-one", func(i, n int, _ time.Duration) float64 {
		if i == 0 {
			return 1
		}
		return 0
	}},
	{"moving", func(i, n int, since time.Duration) float64 {
		if int(since/time.Second)%n == i {
			return 1
		}
		return 0
	}},
}

// TestClusterBench is make bench's cluster part (BENCH_PART=cluster, see
// scripts/cluster-bench.sh), not a test: it runs only with CLUSTER_BENCH=1.
// For N = 1, 2, 4 instances on one database, each load pattern and
// offered load, it prints admitted, the single-bucket bound, the worst
// 1 s window's excess over it, utilisation against one bucket, database
// statements per second, p99 latency and the decisions that waited on
// the database.
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
				clusterBenchRun(t, backend.url, n, p.name, p.share, load, capacity, rate, run)
			}
		}
	}
}

func clusterBenchRun(t *testing.T, backendURL string, n int, name string, share func(i, n int, since time.Duration) float64,
	load float64, capacity int64, rate float64, run time.Duration) {
	cfg := baseConfig(t, backendURL)
	cfg["log_level"] = "info"
	cfg["database_url"] = pgtest.New(t)
	ins := make([]*instance, n)
	for i := range ins {
		ins[i] = start(t, cfg)
	}
	hc := newHTTPClient(t)
	c := ins[0].createClient(t, hc, "bench", rate, capacity)
	as := clusterRun(t, ins, c.APIKey, load*rate, run, share)
	worst, util := clusterCheck(as, float64(capacity), rate, n, []time.Duration{time.Second})
	var stmts, decisions, waited float64
	for _, in := range ins {
		require.NoError(t, in.stop())
		for _, l := range in.logs.lines("leases handed back") {
			stmts += l["statements"].(float64)
			decisions += l["decisions"].(float64)
			waited += l["waited"].(float64)
		}
	}
	lat := make([]time.Duration, len(as))
	ok := 0
	for i, a := range as {
		lat[i] = a.answered.Sub(a.sent)
		if a.ok {
			ok++
		}
	}
	slices.Sort(lat)
	bound := float64(capacity) + rate*run.Seconds() + float64(n)
	fmt.Printf("| %d | %s | %gx | %d | %d | %.0f | %+.1f | %.3f | %.1f | %s | %.0f of %.0f |\n",
		n, name, load, len(as), ok, bound, worst, util, stmts/run.Seconds(),
		lat[len(lat)*99/100].Round(100*time.Microsecond), waited, decisions)
}
