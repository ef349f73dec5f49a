// Command echoback is the demo backend Tollgate forwards to in `make run`
// and docker compose. GET /health answers {"status":"ok","name":...}; every
// other request is answered with a JSON echo of what arrived (method, path,
// query, headers, body size), which shows what the proxy passed on. It
// stops gracefully on SIGINT or SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// shutdownTimeout bounds how long in-flight requests may take to finish
// after a stop signal.
const shutdownTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// run serves until ctx is done, then shuts down gracefully. It logs JSON
// lines to stdout, the first carrying the actual listen address ("addr"),
// so callers that asked for port 0 can find it.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("echoback", flag.ContinueOnError)
	fs.SetOutput(stdout)
	addr := fs.String("addr", envOr("ECHOBACK_ADDR", "127.0.0.1:8081"), "listen address (env ECHOBACK_ADDR)")
	name := fs.String("name", envOr("ECHOBACK_NAME", "echoback"), "name reported in answers (env ECHOBACK_NAME)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("echoback: %w", err)
	}
	logger := slog.New(slog.NewJSONHandler(stdout, nil)).With("name", *name)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("echoback: listen: %w", err)
	}
	srv := &http.Server{
		Handler:           newHandler(*name, logger),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("listening", "addr", ln.Addr().String())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // run waits for it below
	select {
	case err := <-served:
		return fmt.Errorf("echoback: serve: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	<-served // http.ErrServerClosed once Shutdown began
	if err != nil {
		return fmt.Errorf("echoback: shutdown: %w", err)
	}
	logger.Info("stopped")
	return nil
}

func envOr(key, dflt string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return dflt
}

// echo is the answer to any request but the health check.
type echo struct {
	Name      string              `json:"name"`
	Method    string              `json:"method"`
	Host      string              `json:"host"`
	Path      string              `json:"path"`
	Query     map[string][]string `json:"query"`
	Headers   map[string][]string `json:"headers"`
	BodyBytes int64               `json:"body_bytes"`
}

func newHandler(name string, logger *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, logger, map[string]string{"status": "ok", "name": name})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, logger, echo{
			Name:      name,
			Method:    r.Method,
			Host:      r.Host,
			Path:      r.URL.Path,
			Query:     r.URL.Query(),
			Headers:   r.Header,
			BodyBytes: n,
		})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, logger *slog.Logger, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		logger.Debug("write answer", slog.Any("err", err))
	}
}
