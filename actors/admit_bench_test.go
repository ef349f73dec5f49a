package actors

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/tollgate/tollgate/messages"
)

const benchClients = 1000

func benchKeys() []string {
	keys := make([]string, benchClients)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench-key-%06d-abcdefghijklmnop", i)
	}
	return keys
}

func benchLimiter(b *testing.B, keys []string) *Limiter {
	b.Helper()
	store := newMemStore()
	l, err := NewLimiter(context.Background(), LimiterConfig{}, store, discard)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	for i, k := range keys {
		if _, err := l.CreateClient(ctx, newClient(fmt.Sprint("c", i), k, 1e9, 1e9, time.Now())); err != nil {
			b.Fatal(err)
		}
	}
	return l
}

// BenchmarkAdmit measures one admission decision through the shard actors:
// key hash, channel round trip, bucket math.
func BenchmarkAdmit(b *testing.B) {
	keys := benchKeys()
	l := benchLimiter(b, keys)
	ctx := context.Background()
	// A request's context can be cancelled, so Admit also watches it:
	// "serial-cancelable" is what a proxied request pays.
	cancelable, cancel := context.WithCancel(ctx)
	defer cancel()
	for name, ctx := range map[string]context.Context{"serial": ctx, "serial-cancelable": cancelable} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := l.Admit(ctx, keys[i%len(keys)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
	for _, p := range []int{1, 32} {
		// p=1: one goroutine per CPU, each waiting for its answer; p=32: a
		// server's worth of concurrent requests, so shards find queues.
		b.Run(fmt.Sprintf("parallel-x%d", p), func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(p)
			var seed atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				for pb.Next() {
					if _, err := l.Admit(ctx, keys[i%len(keys)]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// BenchmarkAdmitBaseline is the yardstick: x/time/rate limiters in a
// mutex-guarded map, what a hand-rolled limiter usually looks like.
func BenchmarkAdmitBaseline(b *testing.B) {
	keys := benchKeys()
	var mu sync.Mutex
	limiters := make(map[string]*rate.Limiter, len(keys))
	for _, k := range keys {
		limiters[k] = rate.NewLimiter(1e9, 1e9)
	}
	allow := func(k string) bool {
		mu.Lock()
		lim := limiters[k]
		mu.Unlock()
		return lim.Allow()
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			allow(keys[i%len(keys)])
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		var seed atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			i := int(seed.Add(7919))
			for pb.Next() {
				allow(keys[i%len(keys)])
				i++
			}
		})
	})
}

// BenchmarkMemoryPerCachedClient reports the heap held per cached client:
// entry, map slot and index fingerprint, for 1e5 clients.
func BenchmarkMemoryPerCachedClient(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		s := newShard(&limiterConfig{}, discard)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range n {
			id := fmt.Sprintf("client-%06d", i) // the id a store load brings
			c := messages.Client{ID: id, KeyHash: messages.HashKey(id), RatePerSec: 1, Capacity: 10, Tokens: 10}
			s.install(c, newBucket(c), 0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/client")
		runtime.KeepAlive(s)
	}
}
