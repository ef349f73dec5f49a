package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/config"
	"github.com/tollgate/tollgate/messages"
)

// RegistryConfig is what the backend registry needs of the load_balancer
// configuration. Zero values of Timeout, Path, the thresholds and Workers
// take the defaults of SPEC 2; Interval must be positive.
type RegistryConfig struct {
	URLs               []string
	Interval           time.Duration
	Timeout            time.Duration // 0 means Interval
	Path               string        // "" means "/health"
	HealthyThreshold   int           // 0 means 1
	UnhealthyThreshold int           // 0 means 1
	Workers            int           // 0 means 1
	// Weights holds each URL's weight; nil or 0 means 1.
	Weights []int
	// Outlier configures outlier detection; the zero value turns it off.
	Outlier config.Outlier
}

// RegistryConfigFrom takes the registry's part of a loaded configuration.
func RegistryConfigFrom(lb config.LoadBalancer) RegistryConfig {
	return RegistryConfig{
		URLs:               lb.BackendURLs,
		Interval:           lb.HealthCheckInterval,
		Timeout:            lb.HealthCheckTimeout,
		Path:               lb.HealthCheckPath,
		HealthyThreshold:   lb.HealthyThreshold,
		UnhealthyThreshold: lb.UnhealthyThreshold,
		Workers:            lb.HealthCheckWorkerCount,
		Weights:            lb.Weights,
		Outlier:            lb.Outlier,
	}
}

// registryFailureQueue is how many passive failure reports may wait for the
// registry before ReportFailure blocks; enough to absorb a burst of failing
// requests while the loop is busy.
const registryFailureQueue = 64

// Registry is the backend-registry actor. It owns every backend's health
// state, schedules active probes on the worker pool, applies the
// thresholds, and publishes the healthy backends as an immutable snapshot
// that the request path reads without a channel round trip. Run must be
// running for every method but Healthy to make progress; after Run returns
// they fail with messages.ErrStopped.
type Registry struct {
	probe   ProbeFunc
	logger  *slog.Logger
	workers int              // fixed at construction; Reconfigure keeps it
	obs     RegistryObserver // set before Run; called from the loop only

	healthy atomic.Pointer[[]messages.Backend] // published by the loop
	started atomic.Bool
	done    chan struct{} // closed when Run returns

	jobs       chan probeJob // to workers; unbuffered so queued jobs stay fresh
	results    chan probeResult
	failures   chan registryFailure
	statusReqs chan registryStatusRequest
	reconfigs  chan registryReconfigRequest
	outliers   chan int // IDs of backends whose failures reached the threshold

	// threshold is Outlier.ConsecutiveFailures, read by ObserveAnswer on
	// the request path; the loop stores it.
	threshold atomic.Int64

	// Owned by the Run goroutine; before Run starts only NewRegistry
	// touches them.
	cfg      RegistryConfig
	backends map[int]*registryBackend
	order    []int // backend IDs in configured order
	pending  []int // FIFO of IDs whose probe is queued
	nextID   int
	ejectAt  *time.Timer // fires at the earliest ejection's end; Run's
}

type probeState int

const (
	probeIdle probeState = iota
	probeQueued
	probeInFlight
)

// registryBackend is one backend as the registry sees it.
type registryBackend struct {
	backend   messages.Backend
	healthy   bool
	successes int
	failures  int
	lastCheck time.Time
	lastErr   string
	lastCode  int
	latency   time.Duration
	since     time.Time
	// unproven marks a backend added by Reconfigure that has never been
	// probed: its first probe alone decides whether it joins.
	unproven bool
	probe    probeState
	// epoch is bumped by a passive failure and by an ejection, so that a
	// probe already in flight, which may have passed before, cannot bring
	// the backend back.
	epoch uint64
	// ejectedUntil is when the current outlier ejection ends; zero when
	// not ejected. Once it has passed, the next passing probe ends it.
	ejectedUntil time.Time
	ejectReason  string
	ejections    int  // times ejected, for the ejection's length
	returning    bool // its ejection's time is up; a probe is asked
}

type registryFailure struct {
	id  int
	err error
}

type registryStatusRequest struct {
	reply chan []messages.BackendStatus
}

// registryReconfigRequest carries a configuration already normalized and
// parsed in the caller's goroutine.
type registryReconfigRequest struct {
	cfg   RegistryConfig
	urls  []*url.URL
	reply chan struct{}
}

// NewRegistry validates cfg and returns a registry whose backends all start
// healthy, so Healthy serves them before the first probe. probe performs
// the active checks; production code passes HTTPProbe(nil).
func NewRegistry(cfg RegistryConfig, probe ProbeFunc, logger *slog.Logger) (*Registry, error) {
	cfg, urls, err := normalizeRegistryConfig(cfg)
	if err != nil {
		return nil, err
	}
	if probe == nil {
		return nil, errors.New("actors: registry: nil probe")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Registry{
		probe:      probe,
		logger:     logger.With("actor", "registry"),
		workers:    cfg.Workers,
		done:       make(chan struct{}),
		jobs:       make(chan probeJob),
		results:    make(chan probeResult),
		failures:   make(chan registryFailure, registryFailureQueue),
		statusReqs: make(chan registryStatusRequest),
		reconfigs:  make(chan registryReconfigRequest),
		outliers:   make(chan int, registryFailureQueue),
		cfg:        cfg,
		backends:   make(map[int]*registryBackend, len(urls)),
		obs:        nopRegistryObserver{},
	}
	now := time.Now()
	for i, u := range urls {
		st := r.addBackend(u, cfg.Weights[i], now)
		st.healthy = true
	}
	r.threshold.Store(int64(cfg.Outlier.ConsecutiveFailures))
	r.publish()
	return r, nil
}

// normalizeRegistryConfig applies defaults and parses the URLs. It is pure
// so Reconfigure can do it in the caller's goroutine, off the loop.
func normalizeRegistryConfig(cfg RegistryConfig) (RegistryConfig, []*url.URL, error) {
	if cfg.Interval <= 0 {
		return cfg, nil, fmt.Errorf("actors: registry: interval %v must be positive", cfg.Interval)
	}
	if cfg.Timeout < 0 {
		return cfg, nil, fmt.Errorf("actors: registry: timeout %v is negative", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = cfg.Interval
	}
	if cfg.Path == "" {
		cfg.Path = "/health"
	}
	if !strings.HasPrefix(cfg.Path, "/") {
		return cfg, nil, fmt.Errorf("actors: registry: health check path %q must start with /", cfg.Path)
	}
	cfg.HealthyThreshold = max(cfg.HealthyThreshold, 1)
	cfg.UnhealthyThreshold = max(cfg.UnhealthyThreshold, 1)
	cfg.Workers = max(cfg.Workers, 1)
	if len(cfg.URLs) == 0 {
		return cfg, nil, errors.New("actors: registry: no backend urls")
	}
	if cfg.Weights != nil && len(cfg.Weights) != len(cfg.URLs) {
		return cfg, nil, fmt.Errorf("actors: registry: %d weights for %d backend urls", len(cfg.Weights), len(cfg.URLs))
	}
	weights := make([]int, len(cfg.URLs))
	for i := range weights {
		weights[i] = 1
		if i < len(cfg.Weights) && cfg.Weights[i] > 0 {
			weights[i] = cfg.Weights[i]
		}
	}
	cfg.Weights = weights
	if o := cfg.Outlier; o.ConsecutiveFailures < 0 || (o.ConsecutiveFailures > 0 && o.BaseEjectionTime <= 0) {
		return cfg, nil, fmt.Errorf("actors: registry: outlier detection needs a threshold >= 0 and a positive ejection time, got %d and %v",
			o.ConsecutiveFailures, o.BaseEjectionTime)
	}
	urls := make([]*url.URL, 0, len(cfg.URLs))
	seen := make(map[string]bool, len(cfg.URLs))
	for i, raw := range cfg.URLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return cfg, nil, fmt.Errorf("actors: registry: backend url [%d] %q is not an absolute http(s) URL", i, raw)
		}
		if seen[u.String()] {
			return cfg, nil, fmt.Errorf("actors: registry: backend url [%d] %q is listed twice", i, raw)
		}
		seen[u.String()] = true
		urls = append(urls, u)
	}
	cfg.URLs = append([]string(nil), cfg.URLs...)
	return cfg, urls, nil
}

// Workers is how many RunWorker goroutines the caller should start: the
// configured count, at least 1.
func (r *Registry) Workers() int { return r.workers }

// Healthy returns the backends that are healthy now, in configured order.
// It is lock-free and safe for concurrent use; the slice is shared and must
// not be modified. It is empty when no backend is healthy.
func (r *Registry) Healthy() []messages.Backend {
	return *r.healthy.Load()
}

// Run is the registry's loop. It probes every backend at once, then every
// Interval, and serves the other methods until ctx is done; then it returns
// nil and the methods fail with messages.ErrStopped. Run may be called
// once.
func (r *Registry) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("actors: registry: Run called twice")
	}
	defer close(r.done)
	ticker := time.NewTicker(r.cfg.Interval)
	defer ticker.Stop()
	r.ejectAt = time.NewTimer(time.Hour)
	r.ejectAt.Stop()
	defer r.ejectAt.Stop()
	r.logger.Info("registry started", "backends", len(r.order), "workers", r.cfg.Workers)
	r.probeAll()
	for {
		// The nil-channel trick: offer a job only when one is queued, so
		// the loop never blocks on busy workers.
		var jobs chan<- probeJob
		job, ok := r.nextJob()
		if ok {
			jobs = r.jobs
		}
		select {
		case <-ctx.Done():
			return nil
		case jobs <- job:
			r.pending = r.pending[1:]
			r.backends[job.id].probe = probeInFlight
		case res := <-r.results:
			r.handleResult(res)
		case f := <-r.failures:
			r.handleFailure(f, time.Now())
		case id := <-r.outliers:
			r.eject(id, time.Now())
		case <-r.ejectAt.C:
			r.ejectionsDue(time.Now())
		case req := <-r.statusReqs:
			req.reply <- r.statuses()
		case req := <-r.reconfigs:
			interval := r.cfg.Interval
			r.reconfigure(req.cfg, req.urls, time.Now())
			req.reply <- struct{}{}
			if r.cfg.Interval != interval {
				ticker.Reset(r.cfg.Interval)
			}
		case <-ticker.C:
			r.probeAll()
		}
	}
}

func (r *Registry) addBackend(u *url.URL, weight int, now time.Time) *registryBackend {
	r.nextID++
	st := &registryBackend{
		backend: messages.Backend{ID: r.nextID, URL: u, Weight: weight, Load: new(messages.BackendLoad)},
		since:   now,
	}
	r.backends[st.backend.ID] = st
	r.order = append(r.order, st.backend.ID)
	return st
}

func (r *Registry) setHealthy(st *registryBackend, healthy bool, now time.Time) {
	st.healthy = healthy
	st.since = now
	r.publish()
	r.obs.BackendUp(st.backend, st.serving())
}

// publish stores a fresh snapshot of the backends that take traffic:
// healthy and not ejected. Old snapshots are never modified, so readers
// holding one stay consistent.
func (r *Registry) publish() {
	snap := make([]messages.Backend, 0, len(r.order))
	for _, id := range r.order {
		if st := r.backends[id]; st.serving() {
			snap = append(snap, st.backend)
		}
	}
	r.healthy.Store(&snap)
}

func (r *Registry) statuses() []messages.BackendStatus {
	out := make([]messages.BackendStatus, 0, len(r.order))
	for _, id := range r.order {
		st := r.backends[id]
		out = append(out, messages.BackendStatus{
			URL:                  st.backend.URL.String(),
			Healthy:              st.healthy,
			LastCheck:            st.lastCheck,
			LastError:            st.lastErr,
			LastStatus:           st.lastCode,
			LastLatency:          st.latency,
			ConsecutiveFailures:  st.failures,
			ConsecutiveSuccesses: st.successes,
			Since:                st.since,
			Weight:               st.backend.Weight,
			EjectedUntil:         st.ejectedUntil.Round(0),
			EjectedReason:        st.ejectReason,
			Ejections:            st.ejections,
		})
	}
	return out
}

// reconfigure applies a validated configuration: unchanged backends keep
// their ID and state, removed ones leave the snapshot now, and new ones
// join only after their first probe passes.
func (r *Registry) reconfigure(cfg RegistryConfig, urls []*url.URL, now time.Time) {
	if cfg.Workers != r.cfg.Workers {
		r.logger.Info("health check worker count changes only at restart",
			"workers", r.cfg.Workers, "configured", cfg.Workers)
		cfg.Workers = r.cfg.Workers
	}
	byURL := make(map[string]*registryBackend, len(r.backends))
	for _, st := range r.backends {
		byURL[st.backend.URL.String()] = st
	}
	old := r.backends
	r.backends = make(map[int]*registryBackend, len(urls))
	r.order = nil
	for i, u := range urls {
		if st, ok := byURL[u.String()]; ok {
			st.backend.Weight = cfg.Weights[i]
			r.backends[st.backend.ID] = st
			r.order = append(r.order, st.backend.ID)
			delete(old, st.backend.ID)
			continue
		}
		st := r.addBackend(u, cfg.Weights[i], now)
		st.unproven = true
		r.requestProbe(st)
		r.obs.BackendUp(st.backend, false)
		r.logger.Info("backend added", "backend", u.String())
	}
	for _, st := range old {
		r.obs.BackendRemoved(st.backend)
		r.logger.Info("backend removed", "backend", st.backend.URL.String())
	}
	r.cfg = cfg
	r.threshold.Store(int64(cfg.Outlier.ConsecutiveFailures))
	if cfg.Outlier.ConsecutiveFailures == 0 {
		r.releaseAll("outlier detection turned off")
	}
	r.publish()
}

// ReportFailure is the passive health check, called by the request path
// when a connection to b failed: b leaves the healthy snapshot at once
// (whatever the threshold) and gets an immediate probe. It returns quickly:
// reports for a backend already out of the snapshot are dropped, others go
// through a buffered queue, and it gives up when ctx is done or the
// registry has stopped.
func (r *Registry) ReportFailure(ctx context.Context, b messages.Backend, err error) {
	if !snapshotHas(r.Healthy(), b.ID) {
		return
	}
	select {
	case r.failures <- registryFailure{id: b.ID, err: err}:
	case <-ctx.Done():
	case <-r.done:
	}
}

func snapshotHas(bs []messages.Backend, id int) bool {
	for _, b := range bs {
		if b.ID == id {
			return true
		}
	}
	return false
}

// Statuses returns every configured backend's state, in configured order,
// for GET /backends.
func (r *Registry) Statuses(ctx context.Context) ([]messages.BackendStatus, error) {
	req := registryStatusRequest{reply: make(chan []messages.BackendStatus, 1)}
	return call(ctx, r.done, r.statusReqs, req, req.reply)
}

// Reconfigure applies a reloaded configuration (SIGHUP): backends added are
// probed before use, backends removed leave the snapshot at once (requests
// already holding one finish), unchanged ones keep their state; the
// interval, timeout, path and thresholds change for the next probes. The
// worker count cannot change live and is kept. An invalid cfg is refused
// and the old one kept.
func (r *Registry) Reconfigure(ctx context.Context, cfg RegistryConfig) error {
	cfg, urls, err := normalizeRegistryConfig(cfg)
	if err != nil {
		return err
	}
	req := registryReconfigRequest{cfg: cfg, urls: urls, reply: make(chan struct{}, 1)}
	_, err = call(ctx, r.done, r.reconfigs, req, req.reply)
	return err
}
