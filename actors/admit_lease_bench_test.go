package actors

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAdmitLeased is BenchmarkAdmit with shared buckets: decisions
// come from leases, which a Leaser renews against the model store in the
// background. It should cost what BenchmarkAdmit costs, with 0 allocs.
func BenchmarkAdmitLeased(b *testing.B) {
	keys := benchKeys()
	store := newMemStore()
	leases := newModelLeases(store)
	l, err := NewLimiter(context.Background(), LimiterConfig{Shared: &SharedBuckets{Store: leases}}, store, discard)
	if err != nil {
		b.Fatal(err)
	}
	x := NewLeaser(l, discard)
	ctx, cancel := context.WithCancel(context.Background())
	lctx, lcancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- l.Run(lctx) }()
	go func() { defer lcancel(); done <- x.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done; <-done })
	for i, k := range keys {
		if _, err := l.CreateClient(ctx, newClient(fmt.Sprint("c", i), k, 1e9, 1e9, time.Now())); err != nil {
			b.Fatal(err)
		}
	}
	// Warm up: the first requests of each client wait for its lease, and
	// leases grow with demand. Steady state is what is measured.
	for range 100 {
		for _, k := range keys {
			if _, err := l.Admit(ctx, k); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := l.Admit(ctx, keys[i%len(keys)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("parallel-x1", func(b *testing.B) {
		b.ReportAllocs()
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
