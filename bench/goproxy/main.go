// Command goproxy is the peer benchmark's plain-Go baseline: the standard
// library's httputil.ReverseProxy, round-robin over the backends, with a
// transport tuned for keep-alive and nothing else. With -pool it reuses
// its 32 KiB copy buffers through a sync.Pool ("gopool"), the one-line
// tune that shows what the stock proxy spends on allocation.
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18094", "listen address")
	backends := flag.String("backends", "http://127.0.0.1:18081,http://127.0.0.1:18082", "comma-separated backend URLs")
	pool := flag.Bool("pool", false, "reuse copy buffers through a sync.Pool")
	flag.Parse()

	var targets []*url.URL
	for _, s := range strings.Split(*backends, ",") {
		u, err := url.Parse(s)
		if err != nil {
			log.Fatalf("backend %q: %v", s, err)
		}
		targets = append(targets, u)
	}
	var next atomic.Uint64
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(targets[(next.Add(1)-1)%uint64(len(targets))])
			pr.SetXForwarded()
		},
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	if *pool {
		rp.BufferPool = &buffers{}
	}
	srv := &http.Server{Addr: *addr, Handler: rp, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// buffers is an httputil.BufferPool of 32 KiB buffers, the size
// ReverseProxy allocates per response without one.
type buffers struct{ p sync.Pool }

func (b *buffers) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *buffers) Put(buf []byte) { b.p.Put(&buf) }
