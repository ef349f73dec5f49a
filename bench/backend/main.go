// Command backend is the upstream of the peer benchmark (bench/peers.sh):
// as cheap a net/http server as is reasonable, so the proxies in front of
// it are what is measured. Every path answers 200 with the same 100-byte
// body; GET /health answers "ok"; GET /_count tells (and with ?reset=1
// zeroes) how many requests it served, which the harness uses to check
// that a proxy splits its requests evenly.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18081", "listen address")
	name := flag.String("name", "b1", "name written into the body and X-Backend")
	flag.Parse()

	body := fmt.Appendf(nil, "%-99s\n", "tollgate bench backend "+*name)
	length := strconv.Itoa(len(body))
	var served atomic.Int64

	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /_count", func(w http.ResponseWriter, r *http.Request) {
		n := served.Load()
		if r.URL.Query().Get("reset") == "1" {
			served.Store(0)
		}
		fmt.Fprintln(w, n)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		served.Add(1)
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{length}
		h["X-Backend"] = []string{*name}
		_, _ = w.Write(body)
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
