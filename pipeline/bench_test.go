package pipeline

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/metrics"
	"github.com/tollgate/tollgate/traffic"
)

// BenchmarkServeHTTP measures one request through authenticate, admit,
// pick and forward. "keepalive" forwards to an in-process backend over
// keep-alive connections, so its allocations include the backend server's
// and the transport's; "stub" swaps the network for a RoundTripper that
// answers at once, leaving the pipeline's and ReverseProxy's own cost.
// Each runs without an Observer, with package metrics' (metrics=on), and
// with metrics and the dashboard's traffic counters as cmd wires them
// (metrics+traffic): the differences are the per-request costs of each.
func BenchmarkServeHTTP(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Length"] = []string{"2"}
		_, _ = io.WriteString(w, "ok")
	}))
	b.Cleanup(backend.Close)

	run := func(b *testing.B, transport http.RoundTripper, obs Observer) {
		u, err := url.Parse(backend.URL)
		if err != nil {
			b.Fatal(err)
		}
		bs := []messages.Backend{{ID: 0, URL: u}}
		p := New(Options{
			Admitter: fakeAdmitter{admit: func(context.Context, string) (messages.Decision, error) { return allowed, nil }},
			Backends: fakeBackends{
				healthy:       func() []messages.Backend { return bs },
				reportFailure: func(context.Context, messages.Backend, error) {},
			},
			MaxRetries:        2,
			RequestTimeout:    5 * time.Second,
			MaxRetryBodyBytes: 1 << 20,
			Transport:         transport,
			Observer:          obs,
			RetryBudget:       &RetryBudget{Percent: 20, MinRetries: 3}, // as configured by default
		})
		b.Cleanup(p.CloseIdleConnections)
		b.Run("serial", func(b *testing.B) {
			req, w := benchRequest()
			b.ReportAllocs()
			for b.Loop() {
				w.serve(b, p, req)
			}
		})
		b.Run("parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				req, w := benchRequest()
				for pb.Next() {
					w.serve(b, p, req)
				}
			})
		})
	}
	for _, tr := range []struct {
		name string
		rt   http.RoundTripper
	}{{"keepalive", nil}, {"stub", stubTransport{}}} {
		b.Run(tr.name, func(b *testing.B) {
			b.Run("metrics=off", func(b *testing.B) { run(b, tr.rt, nil) })
			b.Run("metrics=on", func(b *testing.B) { run(b, tr.rt, metrics.New()) })
			b.Run("metrics+traffic", func(b *testing.B) {
				run(b, tr.rt, withTraffic{metrics.New(), traffic.New(nil)})
			})
		})
	}
}

// withTraffic is the observer cmd wires: metrics and the dashboard's
// traffic counters, which also see each admission's client.
type withTraffic struct {
	*metrics.Metrics
	traffic *traffic.Counters
}

func (o withTraffic) ObserveRequest(b messages.Backend, status int, d time.Duration) {
	o.Metrics.ObserveRequest(b, status, d)
	o.traffic.ObserveRequest(status)
}

func (o withTraffic) ObserveAdmission(clientID string, allowed bool) {
	o.traffic.ObserveAdmission(clientID, allowed)
}

func benchRequest() (*http.Request, *discardWriter) {
	req := httptest.NewRequest(http.MethodGet, "http://tollgate.test/v1/items?id=7", nil)
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("User-Agent", "bench")
	return req, &discardWriter{h: make(http.Header)}
}

// discardWriter is a ResponseWriter that keeps nothing but the status.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Flush()                      {}

func (w *discardWriter) serve(b *testing.B, p *Pipeline, req *http.Request) {
	clear(w.h)
	w.code = 0
	p.ServeHTTP(w, req)
	if w.code != http.StatusOK {
		b.Fatalf("status %d", w.code)
	}
}

// stubTransport answers every request 200 with an empty body.
type stubTransport struct{}

func (stubTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
	return &http.Response{
		StatusCode: http.StatusOK,
		Header:     make(http.Header),
		Body:       http.NoBody,
		Request:    req,
	}, nil
}

// BenchmarkPick measures choosing the next backend round-robin: a snapshot
// load, as actors.Registry.Healthy does, and a skip over the tried ones.
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{2, 16} {
		urls := make([]string, n)
		for i := range urls {
			urls[i] = fmt.Sprintf("http://127.0.0.1:%d", 18081+i)
		}
		var snap atomic.Pointer[[]messages.Backend]
		bs := backendList(b, urls...)
		snap.Store(&bs)
		p := New(Options{
			Admitter: fakeAdmitter{admit: admitTestKey},
			Backends: fakeBackends{
				healthy:       func() []messages.Backend { return *snap.Load() },
				reportFailure: func(context.Context, messages.Backend, error) {},
			},
		})
		b.Run(fmt.Sprintf("backends=%d/serial", n), func(b *testing.B) {
			b.ReportAllocs()
			var tried [4]int
			for b.Loop() {
				r := route{tried: tried[:0]}
				if _, ok := p.pick(&r); !ok {
					b.Fatal("no backend")
				}
			}
		})
		b.Run(fmt.Sprintf("backends=%d/parallel", n), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var tried [4]int
				for pb.Next() {
					r := route{tried: append(tried[:0], 0)} // a retry: skips one
					if _, ok := p.pick(&r); !ok {
						b.Error("no backend")
						return
					}
				}
			})
		})
	}
}
