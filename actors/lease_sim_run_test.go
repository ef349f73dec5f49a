package actors

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Load patterns: each holder's part of the offered load at a time.
var simPatterns = map[string]func(h, n int, t int64) float64{
	"uniform": func(h, n int, t int64) float64 { return 1 / float64(n) },
	"90-10": func(h, n int, t int64) float64 {
		if n == 1 {
			return 1
		}
		if h == 0 {
			return 0.9
		}
		return 0.1 / float64(n-1)
	},
	"hotspot moving every second": func(h, n int, t int64) float64 {
		if int(t/int64(time.Second))%n == h {
			return 1
		}
		return 0
	},
}

// TestLeaseSimulation is the test 1: N holders with random
// arrivals against a model of the row. For every sliding window of T
// seconds the admissions stay within capacity + rate·T + N, and the
// utilisation against one ideal bucket fed the same arrivals is logged
// (figures for the report) and checked against a floor.
func TestLeaseSimulation(t *testing.T) {
	const (
		capacity = 100.0
		rate     = 50.0
		duration = 20 * int64(time.Second)
	)
	windows := []int64{int64(100 * time.Millisecond), int64(time.Second), int64(5 * time.Second), duration}
	for _, n := range []int{1, 2, 4, 8} {
		for _, load := range []float64{0.5, 2, 10} {
			for _, name := range []string{"uniform", "90-10", "hotspot moving every second"} {
				t.Run(fmt.Sprintf("N=%d/load=%gx/%s", n, load, name), func(t *testing.T) {
					res := runSim(simConfig{holders: n, capacity: capacity, rate: rate, offered: load * rate,
						duration: duration, share: simPatterns[name], seed: uint64(n*1000) + uint64(load*10)})
					require.NotZero(t, res.ideal)
					assert.LessOrEqual(t, res.maxTotal, capacity+1e-9, "row plus leases within capacity")
					worst := -1e18
					for _, w := range windows {
						bound := capacity + rate*float64(w)/1e9 + float64(n)
						ex := worstExcess(res.admitted, w, bound)
						worst = max(worst, ex)
						assert.LessOrEqual(t, ex, 0.0, "window %v: %v over the bound", time.Duration(w), ex)
					}
					util := float64(len(res.admitted)) / float64(res.ideal)
					t.Logf("N=%d load=%gx %-28s offered=%d admitted=%d ideal=%d utilisation=%.3f worst_window_vs_bound=%+.0f waited=%.2f%% (of decisions %.2f%%) renewals/s=%.1f",
						n, load, name, res.offered, len(res.admitted), res.ideal, util, worst,
						100*float64(res.waited)/float64(max(1, len(res.admitted))), 100*float64(res.waited)/float64(max(1, res.offered)),
						float64(res.renewals)/(float64(duration)/1e9))
				})
			}
		}
	}
}

// TestLeaseSimulationSmallBuckets: buckets that hold little refill (tokens
// are scheduled ahead only in one that holds a quarter second of it), and
// one that just holds it. Every window keeps the bound: a lease running on
// tokens scheduled ahead never keeps more than capacity of them due.
func TestLeaseSimulationSmallBuckets(t *testing.T) {
	const duration = 5 * int64(time.Second)
	windows := []int64{0, int64(time.Millisecond), int64(10 * time.Millisecond), int64(100 * time.Millisecond), int64(time.Second)}
	for _, b := range []struct{ capacity, rate float64 }{{2, 500}, {10, 400}, {5, 50}, {25, 100}} {
		for _, n := range []int{1, 2, 4} {
			for _, load := range []float64{1.2, 3, 10} {
				for _, name := range []string{"uniform", "hotspot moving every second"} {
					res := runSim(simConfig{holders: n, capacity: b.capacity, rate: b.rate, offered: load * b.rate,
						duration: duration, share: simPatterns[name], seed: uint64(n) + uint64(load*10)})
					for _, w := range windows {
						// Two admissions at the same instant count in a window
						// of 0: one token more of rounding per instance.
						bound := b.capacity + b.rate*float64(w)/1e9 + 2*float64(n)
						assert.LessOrEqual(t, worstExcess(res.admitted, w, bound), 0.0,
							"capacity %v rate %v N=%d load %gx %s, window %v", b.capacity, b.rate, n, load, name, time.Duration(w))
					}
				}
			}
		}
	}
}
