package traffic

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkObserve measures what one proxied request costs the counters:
// a status count and an admission count, for few clients (the sketch
// finds each) and for many (every newcomer evicts from a full sketch),
// from one goroutine and from GOMAXPROCS of them (contention).
func BenchmarkObserve(b *testing.B) {
	for _, clients := range []int{10, 10_000} {
		ids := make([]string, clients)
		for i := range ids {
			ids[i] = fmt.Sprintf("client-%d", i)
		}
		b.Run(fmt.Sprintf("serial/clients=%d", clients), func(b *testing.B) {
			c := New(nil)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				c.ObserveRequest(200)
				c.ObserveAdmission(ids[i%len(ids)], i%8 != 0)
				i++
			}
		})
		b.Run(fmt.Sprintf("parallel/clients=%d", clients), func(b *testing.B) {
			c := New(nil)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				// Each goroutine starts at its own client, as concurrent
				// requests come from different clients; in lockstep they
				// would meet on the same client every time.
				i := rand.IntN(len(ids))
				for pb.Next() {
					c.ObserveRequest(200)
					c.ObserveAdmission(ids[i%len(ids)], i%8 != 0)
					i++
				}
			})
		})
	}
}
