package actors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ProbeFunc performs one active health probe: a GET of target (the
// backend's URL joined with the health-check path). It returns the HTTP
// status, or an error when no answer arrived. It must give up when ctx is
// done, which is how the probe timeout is enforced; the registry's workers
// call it concurrently.
type ProbeFunc func(ctx context.Context, target string) (status int, err error)

// probeDrainLimit bounds how much of a probe's response body is read before
// the connection is closed; health endpoints answer small bodies and a
// large one must not keep a worker busy.
const probeDrainLimit = 64 << 10

// HTTPProbe returns a ProbeFunc that GETs the target with client. A nil
// client means a dedicated one: no proxy from the environment, no
// keep-alives (each probe tests that the backend still accepts connections
// and no idle connection outlives shutdown), and no redirects followed, so
// a 3xx answer counts as healthy like any status below 500.
func HTTPProbe(client *http.Client) ProbeFunc {
	if client == nil {
		client = NewProbeClient(nil)
	}
	return func(ctx context.Context, target string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return 0, fmt.Errorf("health: build probe request: %w", err)
		}
		req.Header.Set("User-Agent", "tollgate-health-check")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		// Draining lets the transport finish the exchange cleanly; the body
		// itself is ignored, and a probe timeout also cuts a slow body.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, probeDrainLimit))
		_ = resp.Body.Close()
		return resp.StatusCode, nil
	}
}

// NewProbeClient returns the client HTTPProbe(nil) uses. dialTLS, when
// not nil, connects to https backends and completes the TLS handshake (so
// probes verify them as the request path does); nil means the transport's
// own TLS with the system roots.
func NewProbeClient(dialTLS func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DisableKeepAlives = true
	tr.DialTLSContext = dialTLS
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// probeJob asks a worker to probe one backend. It is built by the registry
// at the moment a worker takes it, so it carries the current URL, timeout
// and epoch.
type probeJob struct {
	id      int
	epoch   uint64
	target  string
	timeout time.Duration
}

// probeResult is a worker's answer to a probeJob.
type probeResult struct {
	id      int
	epoch   uint64
	status  int           // 0 when no answer arrived
	err     error         // nil when the probe passed
	at      time.Time     // when the probe finished
	latency time.Duration // how long the probe took
}

// errProbeStatus reports a probe answered with a status of 500 or above.
var errProbeStatus = errors.New("unhealthy status")

// RunWorker is one health-check worker: it takes probe jobs from the
// registry, runs each with its timeout, and sends the result back. The
// caller starts exactly RegistryConfig.Workers of them beside Run in the
// same errgroup; a hung backend holds one worker for at most its timeout
// while the others keep probing. RunWorker returns nil when ctx is done or
// the registry has stopped.
func (r *Registry) RunWorker(ctx context.Context) error {
	for {
		var job probeJob
		select {
		case <-ctx.Done():
			return nil
		case <-r.done:
			return nil
		case job = <-r.jobs:
		}
		res := r.runProbe(ctx, job)
		select {
		case r.results <- res:
		case <-ctx.Done():
			return nil
		case <-r.done:
			return nil
		}
	}
}

func (r *Registry) runProbe(ctx context.Context, job probeJob) probeResult {
	pctx, cancel := context.WithTimeout(ctx, job.timeout)
	defer cancel()
	start := time.Now()
	status, err := r.probe(pctx, job.target)
	end := time.Now()
	if err == nil && status >= http.StatusInternalServerError {
		err = fmt.Errorf("%w %d", errProbeStatus, status)
	}
	return probeResult{
		id:      job.id,
		epoch:   job.epoch,
		status:  status,
		err:     err,
		at:      end,
		latency: end.Sub(start),
	}
}

// probeTarget joins a backend URL and the health-check path, keeping any
// path prefix of the backend (as the proxy does for requests).
func probeTarget(base *url.URL, path string) string {
	u := *base
	p, q, _ := strings.Cut(path, "?")
	u.Path = strings.TrimSuffix(base.Path, "/") + p
	u.RawPath = ""
	u.RawQuery = q
	u.Fragment = ""
	return u.String()
}

// nextJob drops queue entries of removed backends and builds the job for
// the first live one.
func (r *Registry) nextJob() (probeJob, bool) {
	for len(r.pending) > 0 {
		st, ok := r.backends[r.pending[0]]
		if ok && st.probe == probeQueued {
			return probeJob{
				id:      st.backend.ID,
				epoch:   st.epoch,
				target:  probeTarget(st.backend.URL, r.cfg.Path),
				timeout: r.cfg.Timeout,
			}, true
		}
		r.pending = r.pending[1:]
	}
	r.pending = nil
	return probeJob{}, false
}

// requestProbe queues a probe unless one is already queued or in flight.
func (r *Registry) requestProbe(st *registryBackend) {
	if st.probe == probeIdle {
		st.probe = probeQueued
		r.pending = append(r.pending, st.backend.ID)
	}
}

func (r *Registry) probeAll() {
	for _, id := range r.order {
		r.requestProbe(r.backends[id])
	}
}

// handleResult applies one probe result to its backend's state machine.
func (r *Registry) handleResult(res probeResult) {
	st, ok := r.backends[res.id]
	if !ok {
		return // removed while the probe was in flight
	}
	r.obs.ObserveProbe(st.backend, res.err == nil, res.latency)
	st.probe = probeIdle
	if res.epoch != st.epoch {
		// A passive failure arrived while this probe ran; its verdict is
		// stale, so probe again.
		r.requestProbe(st)
		return
	}
	st.lastCheck, st.lastCode, st.latency = res.at, res.status, res.latency
	log := r.logger.With("backend", st.backend.URL.String())
	if res.err == nil {
		st.successes++
		st.failures = 0
		st.lastErr = ""
		if !st.ejectedUntil.IsZero() && !res.at.Before(st.ejectedUntil) {
			r.release(st, "ejection time is up and a probe passed")
		}
		if !st.healthy && (st.unproven || st.successes >= r.cfg.HealthyThreshold) {
			r.setHealthy(st, true, res.at)
			log.Info("backend healthy", "status", res.status, "successes", st.successes)
		}
	} else {
		st.failures++
		st.successes = 0
		st.lastErr = res.err.Error()
		if st.healthy && st.failures >= r.cfg.UnhealthyThreshold {
			r.setHealthy(st, false, res.at)
			log.Warn("backend unhealthy", slog.Any("err", res.err), "status", res.status, "failures", st.failures)
		} else {
			log.Debug("probe failed", slog.Any("err", res.err), "status", res.status, "failures", st.failures)
		}
	}
	st.unproven = false
}

// handleFailure is the passive check: a connection failure ejects the
// backend at once and asks for a probe, whose pass alone (by the healthy
// threshold) brings it back.
func (r *Registry) handleFailure(f registryFailure, now time.Time) {
	st, ok := r.backends[f.id]
	if !ok {
		return
	}
	st.epoch++
	st.failures++
	st.successes = 0
	if f.err != nil {
		st.lastErr = f.err.Error()
	}
	if st.healthy {
		r.setHealthy(st, false, now)
		r.logger.Warn("backend ejected", "backend", st.backend.URL.String(), slog.Any("err", f.err), "passive", true)
	}
	r.requestProbe(st)
}
