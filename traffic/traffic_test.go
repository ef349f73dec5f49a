package traffic

import (
	"fmt"

	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/messages"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable time, safe to read from many goroutines.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.set(time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC))
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }
func last(r messages.TrafficRates, s series, back int) uint64 {
	v := seriesOf(r)[s]
	return v[len(v)-1-back]
}

// top is a top-list entry with no error, as exact counts have.
type top struct {
	id    string
	count uint64
}

func tops(ts ...top) []messages.TopClient {
	out := make([]messages.TopClient, 0, len(ts))
	for _, t := range ts {
		out = append(out, messages.TopClient{ClientID: t.id, Count: t.count})
	}
	return out
}

func seriesOf(r messages.TrafficRates) [numSeries][]uint64 {
	return [numSeries][]uint64{r.Total, r.Class1xx, r.Class2xx, r.Class3xx, r.Class4xx, r.Class5xx, r.Status429}
}

func TestRatesCountBySecondAndClass(t *testing.T) {
	clk := newClock()
	c := New(clk.now)
	for _, st := range []int{200, 204, 301, 404, 429, 429, 502, 101, 0, 999} {
		c.ObserveRequest(st)
	}
	c.ObserveAdmission("refused", false)
	c.ObserveAdmission("refused", false)
	clk.advance(time.Second)
	c.ObserveRequest(200) // the second being counted is not shown yet

	r := c.Rates()
	require.Len(t, r.Total, windowSeconds)
	tests := []struct {
		name   string
		series series
		want   uint64
	}{
		{"total skips statuses outside 1xx-5xx", total, 8},
		{"1xx", class1xx, 1},
		{"2xx", class2xx, 2},
		{"3xx", class3xx, 1},
		{"4xx includes 429", class4xx, 3},
		{"5xx", class5xx, 1},
		{"429: the limiter's refusals", status429, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, last(r, tt.series, 0))
			assert.Zero(t, last(r, tt.series, 1), "the second before had nothing")
		})
	}
	assert.Equal(t, clk.now().Truncate(time.Second).Unix(), r.End.Unix())
}

func TestRatesForgetSecondsOlderThanTheWindow(t *testing.T) {
	clk := newClock()
	c := New(clk.now)
	c.ObserveRequest(200)
	clk.advance(time.Second)
	assert.Equal(t, uint64(1), last(c.Rates(), total, 0))

	clk.advance(Window - time.Second)
	assert.Equal(t, uint64(1), c.Rates().Total[0], "oldest second shown")

	clk.advance(time.Second)
	for _, v := range c.Rates().Total {
		require.Zero(t, v, "a second out of the window is gone")
	}

	// The slot is reused for a new second: it starts from zero.
	c.ObserveRequest(500)
	clk.advance(time.Second)
	r := c.Rates()
	assert.Equal(t, uint64(1), last(r, total, 0))
	assert.Zero(t, last(r, class2xx, 0))
}

func TestTopIsExactForFewClients(t *testing.T) {
	clk := newClock()
	c := New(clk.now)
	for i, id := range []string{"a", "b", "c"} {
		for range (i + 1) * 10 {
			c.ObserveAdmission(id, true)
		}
		for range 5 - i {
			c.ObserveAdmission(id, false)
		}
	}
	admitted, refused := c.Top(2)
	assert.Equal(t, tops(top{"c", 30}, top{"b", 20}), admitted)
	assert.Equal(t, tops(top{"a", 5}, top{"b", 4}), refused)
}

func TestTopMergesBucketsAndForgetsOldOnes(t *testing.T) {
	clk := newClock()
	c := New(clk.now)
	c.ObserveAdmission("old", false)
	clk.advance(bucketSpan)
	c.ObserveAdmission("old", false)
	c.ObserveAdmission("new", false)

	_, refused := c.Top(10)
	assert.Equal(t, tops(top{"old", 2}, top{"new", 1}), refused, "buckets merge")

	clk.advance(Window) // the first bucket leaves the window
	_, refused = c.Top(10)
	assert.Equal(t, tops(top{"new", 1}, top{"old", 1}), refused)

	clk.advance(2 * bucketSpan)
	admitted, refused := c.Top(10)
	assert.Empty(t, admitted)
	assert.Empty(t, refused)
}

func TestTopKeepsHeavyHittersInBoundedMemory(t *testing.T) {
	clk := newClock()
	c := New(clk.now)
	// One heavy client among many more distinct ones than a sketch holds.
	for i := range 10 * sketchSize {
		c.ObserveAdmission(fmt.Sprintf("tail-%d", i), true)
		if i%4 == 0 {
			c.ObserveAdmission("heavy", true)
		}
	}
	for i := range c.shards {
		for _, b := range c.shards[i].top.buckets {
			assert.LessOrEqual(t, len(b.admitted.heap), sketchSize)
			assert.Len(t, b.admitted.index, len(b.admitted.heap))
		}
	}
	admitted, _ := c.Top(1)
	require.Len(t, admitted, 1)
	got := admitted[0]
	assert.Equal(t, "heavy", got.ClientID)
	const want = 10 * sketchSize / 4
	assert.LessOrEqual(t, got.Count-got.Error, uint64(want))
	assert.GreaterOrEqual(t, got.Count+got.Error, uint64(want))
}

// TestConcurrentUse runs writers and readers at once under -race.
func TestConcurrentUse(t *testing.T) {
	clk := newClock()
	c := New(clk.now)
	const writers, perWriter = 4, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				c.ObserveRequest(200 + 100*(i%4))
				c.ObserveAdmission(fmt.Sprintf("c%d", (w*perWriter+i)%100), i%3 != 0)
				if i%500 == 0 {
					clk.advance(300 * time.Millisecond)
				}
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			_ = c.Rates()
			_, _ = c.Top(10)
		}
	})
	wg.Wait()
	clk.advance(time.Second)
	var total uint64
	for _, v := range c.Rates().Total {
		total += v
	}
	assert.Equal(t, uint64(writers*perWriter), total)
}

// TestStatus429CountsLimiterRefusals: the 429 series answers "who is
// being throttled", so it counts the limiter's refusals and not a 429 a
// backend answered, which only 4xx counts.
func TestStatus429CountsLimiterRefusals(t *testing.T) {
	clk := newClock()
	c := New(clk.now)
	c.ObserveAdmission("throttled", false)
	c.ObserveRequest(429) // the refusal's answer
	c.ObserveAdmission("passed", true)
	c.ObserveRequest(429) // a backend's own 429, passed through
	clk.advance(time.Second)

	r := c.Rates()
	assert.Equal(t, uint64(1), last(r, status429, 0), "only the limiter's refusal")
	assert.Equal(t, uint64(2), last(r, class4xx, 0), "both answers were 4xx")
}

// TestTopSpreadsClientsOverShards: admissions of different clients take
// different locks, so request goroutines do not queue on one mutex, and
// Top still sees every shard.
func TestTopSpreadsClientsOverShards(t *testing.T) {
	clk := newClock()
	c := New(clk.now)
	require.GreaterOrEqual(t, len(c.shards), runtime.GOMAXPROCS(0))
	used := map[*shard]bool{}
	throttled := 0
	for i := range 10 * len(c.shards) {
		id := fmt.Sprintf("c%d", i)
		c.ObserveAdmission(id, true)
		for range i % 3 {
			c.ObserveAdmission(id, false)
		}
		if i%3 != 0 {
			throttled++
		}
		used[c.shardOf(id)] = true
	}
	assert.Greater(t, len(used), 1)
	admitted, refused := c.Top(1000)
	assert.Len(t, admitted, 10*len(c.shards))
	assert.Len(t, refused, throttled)
	for _, r := range refused {
		assert.Zero(t, r.Error, "few clients per shard: exact")
	}
}

// TestSketchKeepsHeapAndIndex: after any mix of increments and evictions
// the entries form a min-heap by count and index says where each is.
func TestSketchKeepsHeapAndIndex(t *testing.T) {
	var s sketch
	for i := range 50 * sketchSize {
		s.add(fmt.Sprintf("c%d", (i*7919)%(3*sketchSize)))
		if i%97 != 0 {
			continue
		}
		require.Len(t, s.index, len(s.heap))
		for j, e := range s.heap {
			require.Equal(t, j, s.index[e.id], e.id)
			if j > 0 {
				require.LessOrEqual(t, s.heap[(j-1)/2].count, e.count)
			}
		}
	}
}
