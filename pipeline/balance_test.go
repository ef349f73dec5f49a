package pipeline

import (
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// weighted returns a snapshot of backends named a, b, c, ... with the
// given weights, each counting its load.
func weighted(weights ...int) []messages.Backend {
	snap := make([]messages.Backend, len(weights))
	for i, w := range weights {
		name := string(rune('a' + i))
		snap[i] = messages.Backend{ID: i + 1, URL: &url.URL{Scheme: "http", Host: name}, Weight: w, Load: new(messages.BackendLoad)}
	}
	return snap
}

// sequence names the backends of n round-robin first attempts.
func sequence(lb *balancer, snap []messages.Backend, n int) string {
	var sb strings.Builder
	for range n {
		sb.WriteString(snap[lb.first(snap)].URL.Host)
	}
	return sb.String()
}

func TestSmoothWeightedRoundRobin(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		want    string // one cycle, as nginx's algorithm orders it
	}{
		{"equal weights take turns", []int{1, 1, 1}, "abc"},
		{"zero counts as one", []int{0, 1}, "ab"},
		{"3:1 interleaves", []int{3, 1}, "aaba"},
		{"nginx's 5:1:1 example", []int{5, 1, 1}, "aabacaa"},
		{"weights reduce by their gcd", []int{60, 20}, "aaba"},
		{"2:3", []int{2, 3}, "babab"},
		{"one backend", []int{7}, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var lb balancer
			snap := weighted(tt.weights...)
			assert.Equal(t, strings.Repeat(tt.want, 3), sequence(&lb, snap, 3*len(tt.want)))
		})
	}
}

func TestWeighted3To1Over400(t *testing.T) {
	var lb balancer
	snap := weighted(3, 1)
	seq := sequence(&lb, snap, 400)
	assert.Equal(t, 300, strings.Count(seq, "a"))
	assert.Equal(t, 100, strings.Count(seq, "b"))
	assert.NotContains(t, seq+seq, "aaaa", "never more than 3 in a row on the heavy one, across cycles too")
}

func TestBalancerFollowsNewSnapshots(t *testing.T) {
	var lb balancer
	snap := weighted(3, 1)
	assert.Equal(t, "aaba", sequence(&lb, snap, 4))
	next := weighted(1, 1) // a registry publish: a new array
	assert.Equal(t, "abab", sequence(&lb, next, 4))
	assert.Equal(t, "", sequence(&lb, weighted(), 0))
}

func TestPowerOfTwoPicksTheLessLoaded(t *testing.T) {
	snap := weighted(1, 1)
	snap[0].Load.InFlight.Store(5)
	for r := range uint64(64) {
		assert.Equal(t, 1, powerOfTwo(snap, r<<32|r), "r=%d", r)
	}

	// Weighted: b carries 4 for weight 4, as loaded as a with 1 for 1;
	// one more on b makes a the lighter.
	snap = weighted(1, 4)
	snap[0].Load.InFlight.Store(0)
	snap[1].Load.InFlight.Store(3)
	assert.False(t, lessLoaded(snap[0], snap[1]))
	assert.False(t, lessLoaded(snap[1], snap[0]))
	snap[1].Load.InFlight.Store(4)
	assert.True(t, lessLoaded(snap[0], snap[1]))

	assert.Equal(t, 0, powerOfTwo(weighted(1), 12345), "a lone backend")
	assert.Equal(t, 0, powerOfTwo([]messages.Backend{{ID: 1}, {ID: 2}}, 0), "no load counted: ties go to the first drawn")
}

func TestPowerOfTwoDrawsDistinctPairsEvenly(t *testing.T) {
	snap := weighted(1, 1, 1)
	seen := map[string]int{}
	for r := range uint64(9) {
		i := r % 3
		j := (r / 3) % 2
		seen[fmt.Sprint(powerOfTwo(snap, j<<32|i))]++
	}
	assert.Equal(t, map[string]int{"0": 3, "1": 3, "2": 3}, seen, "ties go to the first drawn, each in turn")
}

func TestLeastLoadedSkipsTried(t *testing.T) {
	snap := weighted(1, 1, 1)
	snap[0].Load.InFlight.Store(0)
	snap[1].Load.InFlight.Store(2)
	snap[2].Load.InFlight.Store(1)
	assert.Equal(t, 0, leastLoaded(snap, nil))
	assert.Equal(t, 2, leastLoaded(snap, []int{1}))
	assert.Equal(t, 1, leastLoaded(snap, []int{1, 3}))
	assert.Equal(t, -1, leastLoaded(snap, []int{1, 2, 3}))
}

func TestBalancerIsAllocationFreeAndRaceFree(t *testing.T) {
	var lb balancer
	snap := weighted(3, 1, 2)
	lb.first(snap) // computes the table
	assert.Zero(t, testing.AllocsPerRun(1000, func() { lb.first(snap) }))
	lb.setPolicy(PolicyLeastRequest)
	assert.Zero(t, testing.AllocsPerRun(1000, func() { lb.first(snap) }))

	// Concurrent picks across a policy switch and new snapshots: the race
	// detector checks, and every pick is in range.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			s := weighted(g+1, 2)
			for i := range 2000 {
				if i%500 == 0 {
					lb.setPolicy([]string{PolicyRoundRobin, PolicyLeastRequest}[(g+i)%2])
				}
				idx := lb.first(s)
				require.GreaterOrEqual(t, idx, 0)
				require.Less(t, idx, len(s))
			}
		})
	}
	wg.Wait()
}

func BenchmarkBalancer(b *testing.B) {
	for _, policy := range []string{PolicyRoundRobin, PolicyLeastRequest} {
		for _, weights := range [][]int{{1, 1}, {3, 1}} {
			b.Run(fmt.Sprintf("%s/%v", policy, weights), func(b *testing.B) {
				var lb balancer
				lb.setPolicy(policy)
				snap := weighted(weights...)
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						lb.first(snap)
					}
				})
			})
		}
	}
}
