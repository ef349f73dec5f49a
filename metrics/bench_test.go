package metrics_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/metrics"
	"github.com/tollgate/tollgate/pipeline"
)

// BenchmarkObserveServedRequest is what metrics add to a request served
// in one attempt: the attempt and the request observed, with the clock
// reads the pipeline makes for them. pipeline's BenchmarkServeHTTP
// measures the same end to end, with more noise.
func BenchmarkObserveServedRequest(b *testing.B) {
	m := metrics.New()
	u, _ := url.Parse("http://127.0.0.1:8081")
	be := messages.Backend{ID: 1, URL: u}
	observe := func() {
		start := time.Now()
		m.ObserveAttempt(be, pipeline.AttemptSuccess, time.Since(start))
		m.ObserveRequest(be, 200, time.Since(start))
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			observe()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				observe()
			}
		})
	})
}
