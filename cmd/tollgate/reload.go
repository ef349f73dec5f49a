package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/tollgate/tollgate/actors"
	"github.com/tollgate/tollgate/config"
	"github.com/tollgate/tollgate/pipeline"
)

// live is the part of the app that SIGHUP changes besides the actors
// (SPEC 6): the configuration in force, the log level and the defaults for
// new clients.
type live struct {
	path  string         // the configuration file, re-read on SIGHUP
	level *slog.LevelVar // the logger's level
	// hup delivers SIGHUP; nil when no signal is watched (tests that call
	// reload directly), and then no reload loop runs.
	hup <-chan os.Signal

	// cfg is the configuration in force: restart-only fields keep their
	// start values. Only reload touches it once the app runs, and reloads
	// run one at a time on the reload loop.
	cfg *config.Config
	// defaults is read by every POST /clients, swapped by reload.
	defaults atomic.Pointer[clientDefaults]
}

// clientDefaults are the limits of a new client that gives none.
type clientDefaults struct {
	rate     float64
	capacity int64
}

func (l *live) setDefaults(rl config.RateLimiter) {
	l.defaults.Store(&clientDefaults{rate: rl.DefaultRatePerSec, capacity: rl.DefaultCapacity})
}

// clientDefaults is httpapi.Options.Defaults.
func (l *live) clientDefaults() (float64, int64) {
	d := l.defaults.Load()
	return d.rate, d.capacity
}

// watchSIGHUP starts delivering SIGHUP to the reload loop, so that from
// now on a SIGHUP reloads path instead of ending the process. The returned
// func stops it; call it when run returns.
func (a *app) watchSIGHUP(path string, level *slog.LevelVar) (stop func()) {
	hup := make(chan os.Signal, 1) // a burst of signals coalesces into one reload
	signal.Notify(hup, syscall.SIGHUP)
	a.live.path, a.live.level, a.live.hup = path, level, hup
	return func() { signal.Stop(hup) }
}

// reloadLoop reloads the configuration on each SIGHUP until ctx is done.
// It runs in the app's errgroup and never fails it: a bad file is logged
// and the running configuration kept.
func (a *app) reloadLoop(ctx context.Context, log *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.live.hup:
			log.Info("SIGHUP: reloading config", "config", a.live.path)
			if err := a.reload(ctx, log); err != nil {
				log.Error("config reload failed; keeping the running configuration",
					"config", a.live.path, slog.Any("err", err))
			}
		}
	}
}

// reload re-reads the configuration file and applies what can change live:
// backends (added ones join after their first passing probe, removed ones
// take no new requests while those in flight finish), health-check
// settings, max_retries, request_timeout, log level and the defaults for
// new clients. Restart-only fields that differ are logged as warnings and
// keep their running values. An invalid file, or a registry that refuses
// the backends, changes nothing and is returned.
func (a *app) reload(ctx context.Context, log *slog.Logger) error {
	next, err := config.Load(a.live.path)
	if err != nil {
		a.metrics.ConfigReloaded(false)
		return err
	}
	cur := a.live.cfg
	files, err := a.readTLSFiles(next)
	if err != nil {
		a.metrics.ConfigReloaded(false)
		return err
	}
	if err := a.registry.Reconfigure(ctx, actors.RegistryConfigFrom(next.LoadBalancer)); err != nil {
		a.metrics.ConfigReloaded(false)
		return fmt.Errorf("reload backends: %w", err)
	}
	a.backendTLS.roots.Store(files.roots)
	if files.cert != nil {
		a.cert.cert.Store(files.cert)
	}
	lb := next.LoadBalancer
	a.forward.SetLimits(lb.MaxRetries, lb.RequestTimeout)
	a.forward.SetBalancing(lb.Policy, retryBudget(lb))
	if err := a.live.level.UnmarshalText([]byte(next.LogLevel)); err != nil {
		// config.Load has validated the level; this is a wiring bug.
		log.Error("reload: log level", slog.Any("err", err))
	}
	a.live.setDefaults(next.RateLimiter)
	warnRestartOnly(cur, next, log)
	a.live.cfg = inForce(cur, next)
	a.metrics.ConfigReloaded(true)
	log.Info("config reloaded",
		"backends", len(lb.BackendURLs),
		"max_retries", lb.MaxRetries,
		"policy", lb.Policy,
		"request_timeout", lb.RequestTimeout.String(),
		"health_check_interval", lb.HealthCheckInterval.String(),
		"log_level", next.LogLevel,
		"default_rate_per_sec", next.RateLimiter.DefaultRatePerSec,
		"default_capacity", next.RateLimiter.DefaultCapacity,
	)
	return nil
}

// tlsFiles are what a reload reads besides the configuration file.
type tlsFiles struct {
	cert  *tls.Certificate // nil: the servers speak plain HTTP
	roots *x509.CertPool
}

// readTLSFiles reads the certificate and CA files next names, so that a
// bad one fails the reload before anything changes. The servers keep
// speaking TLS or not as they started.
func (a *app) readTLSFiles(next *config.Config) (tlsFiles, error) {
	var f tlsFiles
	var err error
	if f.roots, err = loadRoots(next.LoadBalancer.CAFile); err != nil {
		return f, err
	}
	if a.cert != nil && next.TLSEnabled() {
		if f.cert, err = loadKeyPair(next.TLSCertFile, next.TLSKeyFile); err != nil {
			return f, err
		}
	}
	return f, nil
}

// inForce is the configuration after a reload: next's live fields over
// cur's restart-only ones.
func inForce(cur, next *config.Config) *config.Config {
	out := *cur
	out.LogLevel = next.LogLevel
	if cur.TLSEnabled() && next.TLSEnabled() {
		out.TLSCertFile, out.TLSKeyFile = next.TLSCertFile, next.TLSKeyFile
	}
	lb := next.LoadBalancer
	lb.HealthCheckWorkerCount = cur.LoadBalancer.HealthCheckWorkerCount
	lb.MaxRetryBodyBytes = cur.LoadBalancer.MaxRetryBodyBytes
	lb.MaxRetryBufferBytes = cur.LoadBalancer.MaxRetryBufferBytes
	out.LoadBalancer = lb
	out.RateLimiter.DefaultRatePerSec = next.RateLimiter.DefaultRatePerSec
	out.RateLimiter.DefaultCapacity = next.RateLimiter.DefaultCapacity
	return &out
}

// restartOnly are the fields a reload cannot change, by JSON path. Secret
// ones are named in the log but their values are not.
var restartOnly = []struct {
	path   string
	secret bool
	get    func(*config.Config) any
}{
	{"port", false, func(c *config.Config) any { return c.Port }},
	{"admin_port", false, func(c *config.Config) any { return c.AdminPort }},
	{"log_file", false, func(c *config.Config) any { return c.LogFile }},
	{"database_url", true, func(c *config.Config) any { return c.DatabaseURL }},
	{"state_file", false, func(c *config.Config) any { return c.StateFile }},
	{"admin_api_key", true, func(c *config.Config) any { return c.AdminAPIKey }},
	{"shutdown_timeout", false, func(c *config.Config) any { return c.ShutdownTimeout }},
	{"database_connect_timeout", false, func(c *config.Config) any { return c.DatabaseConnectTimeout }},
	{"access_log", false, func(c *config.Config) any { return c.AccessLog }},
	{"pprof", false, func(c *config.Config) any { return c.Pprof }},
	{"tls_cert_file (TLS on or off)", false, func(c *config.Config) any { return c.TLSEnabled() }},
	{"load_balancer.health_check_worker_count", false, func(c *config.Config) any { return c.LoadBalancer.HealthCheckWorkerCount }},
	{"load_balancer.max_retry_body_bytes", false, func(c *config.Config) any { return c.LoadBalancer.MaxRetryBodyBytes }},
	{"load_balancer.max_retry_buffer_bytes", false, func(c *config.Config) any { return c.LoadBalancer.MaxRetryBufferBytes }},
	{"rate_limiter.add_tokens_interval", false, func(c *config.Config) any { return c.RateLimiter.AddTokensInterval }},
	{"rate_limiter.save_state_interval", false, func(c *config.Config) any { return c.RateLimiter.SaveStateInterval }},
	{"rate_limiter.remove_stale_interval", false, func(c *config.Config) any { return c.RateLimiter.RemoveStaleInterval }},
	{"rate_limiter.cache.time_to_live", false, func(c *config.Config) any { return c.RateLimiter.CacheTTL }},
	{"rate_limiter.hash_api_keys", false, func(c *config.Config) any { return c.RateLimiter.HashAPIKeys }},
	{"rate_limiter.lease_ttl", false, func(c *config.Config) any { return c.RateLimiter.LeaseTTL }},
	{"rate_limiter.store_down_policy", false, func(c *config.Config) any { return c.RateLimiter.StoreDownPolicy }},
}

// warnRestartOnly logs one warning per restart-only field whose value in
// the file differs from the running one.
func warnRestartOnly(cur, next *config.Config, log *slog.Logger) {
	for _, f := range restartOnly {
		was, now := f.get(cur), f.get(next)
		if was == now {
			continue
		}
		attrs := []any{"field", f.path}
		if !f.secret {
			attrs = append(attrs, "running", fmt.Sprint(was), "file", fmt.Sprint(now))
		}
		log.Warn("config field changes only at restart; keeping the running value", attrs...)
	}
}

// retryBudget is the pipeline's view of load_balancer.retry_budget.
func retryBudget(lb config.LoadBalancer) *pipeline.RetryBudget {
	return &pipeline.RetryBudget{Percent: lb.RetryBudget.Percent, MinRetries: lb.RetryBudget.MinRetries}
}
