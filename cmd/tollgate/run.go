package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tollgate/tollgate/actors"
	"github.com/tollgate/tollgate/config"
	"github.com/tollgate/tollgate/httpapi"
	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/metrics"
	"github.com/tollgate/tollgate/persist"
	"github.com/tollgate/tollgate/pipeline"
	"github.com/tollgate/tollgate/traffic"
)

// options are the command-line flags. The address overrides exist so that
// tests can run the whole program on 127.0.0.1:0; the chosen addresses are
// logged in a "listening" line.
type options struct {
	configPath string
	addr       string
	adminAddr  string
}

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("tollgate", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.configPath, "config", "config.json", "path of the JSON configuration")
	fs.StringVar(&o.addr, "addr", "", "listen address of the main port, overriding port (e.g. 127.0.0.1:0)")
	fs.StringVar(&o.adminAddr, "admin-addr", "", "listen address of the admin API, overriding admin_port")
	if err := fs.Parse(args); err != nil {
		return o, usageError{err}
	}
	if fs.NArg() > 0 {
		return o, usageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	return o, nil
}

// run is the whole program: it returns when ctx is cancelled and every
// part has stopped, or when a part fails.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	opts, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	cfg, err := config.Load(opts.configPath)
	if err != nil {
		return err
	}
	log, level, closeLog, err := newLogger(cfg, stdout)
	if err != nil {
		return err
	}
	defer closeLog()

	store, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("close store", slog.Any("err", err))
		}
	}()
	a, err := assemble(ctx, cfg, store, log)
	if err != nil {
		return err
	}
	// Before listening: once the "listening" line is out, SIGHUP reloads.
	defer a.watchSIGHUP(opts.configPath, level)()
	servers, err := listen(cfg, opts, a, log)
	if err != nil {
		return err
	}
	return a.run(ctx, servers, cfg.ShutdownTimeout, log)
}

func openStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (persist.Store, error) {
	if cfg.DatabaseURL != "" {
		s, err := openPostgres(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		log.Info("store opened", "store", "postgres")
		return s, eraseClearKeys(ctx, cfg, s, log)
	}
	s, err := persist.OpenBolt(cfg.StateFile, log)
	if err != nil {
		return nil, err
	}
	log.Info("store opened", "store", "embedded", "state_file", cfg.StateFile)
	return s, eraseClearKeys(ctx, cfg, s, log)
}

// Backoff between attempts to reach PostgreSQL at start.
const (
	dbRetryMin = 100 * time.Millisecond
	dbRetryMax = 2 * time.Second
)

// openPostgres opens the store, retrying with backoff while the server
// cannot be reached, for up to database_connect_timeout: a database that
// starts together with Tollgate (compose, a rebooted host) is waited for.
// Each failure is logged. Errors other than an unreachable server (a bad
// DSN, a failed migration) are not retried.
func openPostgres(ctx context.Context, cfg *config.Config, log *slog.Logger) (*persist.Postgres, error) {
	deadline := time.Now().Add(cfg.DatabaseConnectTimeout)
	wait := time.NewTimer(0)
	defer wait.Stop()
	backoff := dbRetryMin
	for attempt := 1; ; attempt++ {
		s, err := persist.OpenPostgres(ctx, cfg.DatabaseURL, log)
		if err == nil || !errors.Is(err, messages.ErrUnavailable) || ctx.Err() != nil {
			return s, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("database unreachable for database_connect_timeout (%s): %w", cfg.DatabaseConnectTimeout, err)
		}
		pause := min(backoff, left)
		log.Warn("database unreachable; retrying", "attempt", attempt, "retry_in", pause.String(), slog.Any("err", err))
		wait.Reset(pause)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wait.C:
		}
		backoff = min(2*backoff, dbRetryMax)
	}
}

// eraseClearKeys, with hash_api_keys on, erases the keys the store still
// keeps in clear from before it was turned on (SPEC 4). It closes s when
// it fails, since the caller gets no store then.
func eraseClearKeys(ctx context.Context, cfg *config.Config, s persist.Store, log *slog.Logger) error {
	eraser, ok := s.(persist.KeyEraser)
	if !cfg.RateLimiter.HashAPIKeys || !ok {
		return nil
	}
	n, err := eraser.EraseClearKeys(ctx)
	if err != nil {
		_ = s.Close()
		return err
	}
	if n > 0 {
		log.Info("keys kept in clear erased: hash_api_keys is on", "clients", n)
	}
	return nil
}

// app is Tollgate's actors and handlers, wired.
type app struct {
	limiter   *actors.Limiter
	persister *actors.Persister
	// leaser renews leases on buckets shared with other instances; nil
	// for the embedded store.
	leaser   *actors.Leaser
	registry *actors.Registry
	forward  *pipeline.Pipeline
	admin    http.Handler
	// watcher reports other instances' admin changes; nil for the
	// embedded store, which has no other instances.
	watcher persist.Watcher
	metrics *metrics.Metrics
	live    live // what SIGHUP changes: reload.go
	// cert is the servers' certificate; nil when they speak plain HTTP.
	cert *serverCert
	// backendTLS verifies https backends; SIGHUP reloads its roots.
	backendTLS *backendTLS
}

func assemble(ctx context.Context, cfg *config.Config, store persist.Store, log *slog.Logger) (*app, error) {
	rl, lb := cfg.RateLimiter, cfg.LoadBalancer
	m := metrics.New()
	counters := traffic.New(nil)
	// The measured store is a persist.Store only: optional interfaces
	// such as persist.Watcher are asked of store itself.
	measured := m.InstrumentStore(store)
	limiter, err := actors.NewLimiter(ctx, actors.LimiterConfig{
		AddTokensInterval:   rl.AddTokensInterval,
		RemoveStaleInterval: rl.RemoveStaleInterval,
		CacheTTL:            rl.CacheTTL,
		LoadTimeout:         lb.RequestTimeout,
		HashAPIKeys:         rl.HashAPIKeys,
		Shared:              sharedBuckets(cfg, store),
	}, measured, log)
	if err != nil {
		return nil, err
	}
	cert, bt, err := loadTLS(cfg)
	if err != nil {
		return nil, err
	}
	probe := actors.HTTPProbe(actors.NewProbeClient(bt.DialTLSContext))
	registry, err := actors.NewRegistry(actors.RegistryConfigFrom(lb), probe, log)
	if err != nil {
		return nil, err
	}
	m.CachedClients(limiter.CachedClients)
	registry.SetObserver(m)
	a := &app{
		watcher:    asWatcher(store),
		cert:       cert,
		backendTLS: bt,
		limiter:    limiter,
		leaser:     actors.NewLeaser(limiter, log),
		registry:   registry,
		metrics:    m,
		persister: actors.NewPersister(actors.PersisterConfig{
			Interval:     rl.SaveStateInterval,
			FlushTimeout: cfg.ShutdownTimeout,
			Observer:     m,
		}, limiter, measured, log),
		forward: pipeline.New(pipeline.Options{
			Admitter:            limiter,
			Backends:            registry,
			MaxRetries:          lb.MaxRetries,
			RequestTimeout:      lb.RequestTimeout,
			MaxRetryBodyBytes:   lb.MaxRetryBodyBytes,
			MaxRetryBufferBytes: retryBufferBytes(lb.MaxRetryBufferBytes),
			Logger:              log,
			AccessLog:           cfg.AccessLog,
			Observer:            observers{Metrics: m, traffic: counters, registry: registry},
			DialTLSContext:      bt.DialTLSContext,
			Policy:              lb.Policy,
			RetryBudget:         retryBudget(lb),
		}),
	}
	if a.leaser != nil {
		m.Leases(a.leaser.Stats)
	}
	a.live.cfg = cfg
	a.live.setDefaults(rl)
	a.admin = httpapi.NewAdmin(httpapi.Options{
		Clients:  limiter,
		Backends: registry,
		AdminKey: cfg.AdminAPIKey,
		Defaults: a.live.clientDefaults,
		Metrics:  m.Handler(),
		Traffic:  counters,
		Pprof:    cfg.Pprof,
		Logger:   log,
	})
	if cfg.AdminAPIKey == "" {
		log.Warn("admin_api_key is not set: the admin API answers loopback peers only")
	}
	return a, nil
}

// server is one listening HTTP server.
type server struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

// retryBufferBytes is load_balancer.max_retry_buffer_bytes as
// pipeline.Options takes it: in the config 0 holds no body, in Options 0
// is the default and a negative value holds none.
func retryBufferBytes(v int64) int64 {
	if v == 0 {
		return -1
	}
	return v
}

func listen(cfg *config.Config, opts options, a *app, log *slog.Logger) ([]*server, error) {
	mainAddr := orAddr(opts.addr, cfg.Port)
	var mainHandler http.Handler = a.forward
	separate := cfg.AdminPort != 0 || opts.adminAddr != ""
	if !separate {
		var extra []string
		if cfg.Pprof {
			extra = append(extra, httpapi.PprofPrefix)
		}
		mainHandler = httpapi.NewMain(a.admin, a.forward, extra...)
	}
	var servers []*server
	var tlsConf *tls.Config
	if a.cert != nil {
		tlsConf = a.cert.tlsConfig()
	}
	s, err := newServer("main", mainAddr, mainHandler, tlsConf, log)
	if err != nil {
		return nil, err
	}
	servers = append(servers, s)
	if separate {
		s, err := newServer("admin", orAddr(opts.adminAddr, cfg.AdminPort), a.admin, tlsConf, log)
		if err != nil {
			servers[0].ln.Close()
			return nil, err
		}
		servers = append(servers, s)
	}
	return servers, nil
}

func orAddr(addr string, port int) string {
	if addr != "" {
		return addr
	}
	return ":" + strconv.Itoa(port)
}

// readHeaderTimeout cuts off clients that dribble their request headers
// (slowloris). A variable only so that tests need not wait 5 s.
var readHeaderTimeout = 5 * time.Second

// newServer listens on addr. A non-nil tlsConf makes the server speak TLS
// (HTTP/2 and HTTP/1.1 by ALPN); each server gets its own copy.
func newServer(name, addr string, h http.Handler, tlsConf *tls.Config, log *slog.Logger) (*server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s on %s: %w", name, addr, err)
	}
	log.Info("listening", "server", name, "addr", ln.Addr().String(), "tls", tlsConf != nil)
	if tlsConf != nil {
		tlsConf = tlsConf.Clone()
	}
	return &server{name: name, ln: ln, srv: &http.Server{
		TLSConfig:         tlsConf,
		Handler:           closeAfterChunked(h),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}, nil
}

// closeAfterChunked closes the connection after answering a request with
// a chunked body. net/http reads a request carrying both Content-Length and
// Transfer-Encoding as chunked and drops the length (RFC 9112 6.3), but
// keeps the connection open: a proxy in front that framed the body by its
// length would see other request boundaries than ours (request smuggling).
// RFC 9112 6.1 requires closing after such a request; a handler can no
// longer tell it from a plain chunked one, so every chunked request closes
// its connection, which costs honest clients a reconnect at most.
func closeAfterChunked(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// keyIndexResync is how often the key index is reloaded from a shared
// store besides its change notifications, which are lossless while the
// listener is connected: this is a backstop, so it can be slow.
const keyIndexResync = 5 * time.Minute

// sharedBuckets is the lease setup when the store shares buckets between
// instances (PostgreSQL), else nil.
func sharedBuckets(cfg *config.Config, s persist.Store) *actors.SharedBuckets {
	ls, ok := s.(persist.LeaseStore)
	if !ok {
		return nil
	}
	rl := cfg.RateLimiter
	return &actors.SharedBuckets{
		Store:           ls,
		LeaseTTL:        rl.LeaseTTL,
		ReportInterval:  rl.SaveStateInterval,
		StoreDownPolicy: rl.StoreDownPolicy,
		FlushTimeout:    cfg.ShutdownTimeout,
	}
}

func asWatcher(s persist.Store) persist.Watcher {
	w, _ := s.(persist.Watcher)
	return w
}

// run supervises every part under one errgroup and stops them in order:
// the HTTP servers drain first, then probes stop and the persister
// flushes, then the limiter shards it flushes from stop.
func (a *app) run(ctx context.Context, servers []*server, shutdownTimeout time.Duration, log *slog.Logger) error {
	g, gctx := errgroup.WithContext(ctx)
	actorsCtx, stopActors := context.WithCancel(context.WithoutCancel(ctx))
	persistCtx, stopPersist := context.WithCancel(context.WithoutCancel(ctx))
	defer stopActors()
	defer stopPersist()

	g.Go(func() error { return a.limiter.Run(actorsCtx) })
	// Probes stop with the servers, before the final flush.
	g.Go(func() error { return a.registry.Run(persistCtx) })
	for range a.registry.Workers() {
		g.Go(func() error { return a.registry.RunWorker(persistCtx) })
	}
	g.Go(func() error {
		// The shards stop once both have flushed: the persister its states,
		// the leaser its leases.
		defer stopActors()
		var flushers errgroup.Group
		flushers.Go(func() error { return a.persister.Run(persistCtx) })
		if a.leaser != nil {
			flushers.Go(func() error { return a.leaser.Run(persistCtx) })
		}
		return flushers.Wait()
	})
	if a.watcher != nil {
		g.Go(func() error { return a.watcher.Watch(persistCtx, keyIndexResync, a.limiter.ApplyChange) })
	}
	g.Go(func() error {
		defer stopPersist()
		return serve(gctx, servers, shutdownTimeout, log)
	})
	if a.live.hup != nil {
		g.Go(func() error { return a.reloadLoop(gctx, log) })
	}
	err := g.Wait()
	// Idle upstream connections each hold a transport goroutine.
	a.forward.CloseIdleConnections()
	log.Info("stopped")
	return err
}

// serve serves s.ln, over TLS when the server has a TLS configuration.
func (s *server) serve() error {
	if s.srv.TLSConfig != nil {
		return s.srv.ServeTLS(s.ln, "", "")
	}
	return s.srv.Serve(s.ln)
}

// serve runs the servers until ctx is done or one fails, then shuts them
// all down, letting in-flight requests finish within timeout.
func serve(ctx context.Context, servers []*server, timeout time.Duration, log *slog.Logger) error {
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.serve() }() // received below, once per server
	}
	var err error
	pending := len(servers)
	select {
	case <-ctx.Done():
	case err = <-errc:
		pending--
		err = fmt.Errorf("serve: %w", err)
	}
	log.Info("shutting down", "timeout", timeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	for _, s := range servers {
		if serr := s.srv.Shutdown(sctx); serr != nil {
			log.Warn("in-flight requests cut at shutdown timeout", "server", s.name, slog.Any("err", serr))
			_ = s.srv.Close()
		}
	}
	for range pending {
		if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = fmt.Errorf("serve: %w", serr)
		}
	}
	return err
}

// newLogger builds the JSON logger of log_level and log_file (appended,
// created if missing; stdout when empty). The returned LevelVar lets a
// reload change the level.
func newLogger(cfg *config.Config, stdout io.Writer) (*slog.Logger, *slog.LevelVar, func(), error) {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, nil, nil, fmt.Errorf("log_level: %w", err)
	}
	w, closeFn := stdout, func() {}
	if cfg.LogFile != "" {
		f, err := os.OpenFile(cfg.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("log_file: %w", err)
		}
		w, closeFn = f, func() { _ = f.Close() }
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), level, closeFn, nil
}
