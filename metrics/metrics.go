// Package metrics owns Tollgate's Prometheus metrics: a dedicated registry
// (not the global default, so tests and embedders get clean state), the
// collectors, and the observers the instrumented packages report to. One
// Metrics implements pipeline.Observer, actors.RegistryObserver and
// actors.PersisterObserver, wraps the store to count its failures, and
// serves the registry in the Prometheus text format.
//
// Metrics starts no goroutines and needs no stopping. Label values are
// bounded: backends (by URL), status classes, and fixed enumerations;
// never a client.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tollgate/tollgate/messages"
)

// namespace prefixes every Tollgate family.
const namespace = "tollgate"

// Label values used when there is nothing better to say.
const (
	noBackend  = "none"  // a request that reached no backend
	otherClass = "other" // a status outside 1xx..5xx
)

// Metrics is Tollgate's metrics registry and the observers feeding it. Its
// methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	requests        *prometheus.CounterVec   // backend, status_class
	requestDuration *prometheus.HistogramVec // status_class
	attempts        *prometheus.CounterVec   // backend, result
	attemptDuration *prometheus.HistogramVec // backend
	retries         *prometheus.CounterVec   // backend
	retriesRefused  prometheus.Counter
	rateLimited     prometheus.Counter
	authFailures    *prometheus.CounterVec // reason

	backendUp      *prometheus.GaugeVec     // backend
	healthDuration *prometheus.HistogramVec // backend, result
	ejections      *prometheus.CounterVec   // backend

	storeErrors   *prometheus.CounterVec   // operation
	storeDuration *prometheus.HistogramVec // operation
	saveDuration  prometheus.Histogram
	saveBatchSize prometheus.Histogram

	reloads *prometheus.CounterVec // result

	// Label children resolved ahead, so the request path does no label
	// hashing: per status class, per auth reason, per backend.
	byClass  [numClasses]prometheus.Observer
	byReason authCounters
	backends backendCache
}

// New returns a Metrics with every family registered, including the Go
// runtime and process collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.newRequestFamilies()
	m.newBackendFamilies()
	m.newStoreFamilies()
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "config_reloads_total",
		Help: "Configuration reloads on SIGHUP, by result (success, failure).",
	}, []string{"result"})
	m.reg.MustRegister(
		m.requests, m.requestDuration, m.attempts, m.attemptDuration, m.retries,
		m.retriesRefused, m.rateLimited, m.authFailures,
		m.backendUp, m.healthDuration, m.ejections,
		m.storeErrors, m.storeDuration, m.saveDuration, m.saveBatchSize,
		m.reloads,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	for c := range numClasses {
		m.byClass[c] = m.requestDuration.WithLabelValues(classNames[c])
	}
	m.byReason.init(m.authFailures)
	m.backends.init(m)
	for _, r := range []string{"success", "failure"} {
		m.reloads.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) newRequestFamilies() {
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "requests_total",
		Help: "Requests answered on the main port, by backend (URL, or none when no backend was tried) and status class (2xx, 4xx, ...).",
	}, []string{"backend", "status_class"})
	m.requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "request_duration_seconds",
		Help:    "Time from a request's arrival to the end of its answer, by status class.",
		Buckets: prometheus.DefBuckets,
	}, []string{"status_class"})
	m.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_attempts_total",
		Help: "Upstream attempts, by backend and result (success, error, timeout, bad_status, canceled).",
	}, []string{"backend", "result"})
	m.attemptDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "upstream_attempt_duration_seconds",
		Help:    "Time from sending an attempt to the backend's response headers or the attempt's failure, by backend.",
		Buckets: prometheus.DefBuckets,
	}, []string{"backend"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "retries_total",
		Help: "Failed attempts retried on another backend, by the backend that failed.",
	}, []string{"backend"})
	m.retriesRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "retries_refused_total",
		Help: "Failed attempts not retried because the retry budget was spent; their answer went to the client.",
	})
	m.rateLimited = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "rate_limited_total",
		Help: "Requests refused with 429 because the client's bucket was empty.",
	})
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "auth_failures_total",
		Help: "Requests refused with 401, by reason (missing, malformed, unknown).",
	}, []string{"reason"})
}

func (m *Metrics) newBackendFamilies() {
	m.backendUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "backend_up",
		Help: "1 when the backend is healthy and takes traffic, else 0.",
	}, []string{"backend"})
	m.healthDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "health_check_duration_seconds",
		Help:    "Duration of active health probes, by backend and result (success, failure).",
		Buckets: prometheus.DefBuckets,
	}, []string{"backend", "result"})
	m.ejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "outlier_ejections_total",
		Help: "Outlier ejections: a backend taken out of rotation after failed answers in a row, by backend.",
	}, []string{"backend"})
}

func (m *Metrics) newStoreFamilies() {
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "store_errors_total",
		Help: "Failed store operations, by operation; not-found and conflict answers are not failures.",
	}, []string{"operation"})
	m.storeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "store_operation_duration_seconds",
		Help:    "Duration of store operations, by operation.",
		Buckets: prometheus.DefBuckets,
	}, []string{"operation"})
	m.saveDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "state_save_duration_seconds",
		Help:    "Duration of the persister's batch writes of bucket states.",
		Buckets: prometheus.DefBuckets,
	})
	m.saveBatchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "state_save_batch_clients",
		Help:    "Clients per batch write of bucket states.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 10),
	})
}

// Handler serves the registry in the Prometheus exposition format.
// Collection errors are logged in the answer rather than failing it, so
// one broken collector does not hide the rest.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// Gatherer is the registry, for tests and for embedding in another
// exposition.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// CachedClients publishes n, read at each scrape, as
// tollgate_cached_clients. n must be safe to call from any goroutine;
// actors.Limiter.CachedClients is. Call it once.
func (m *Metrics) CachedClients(n func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "cached_clients",
		Help: "Clients whose buckets are cached in memory now.",
	}, func() float64 { return float64(n()) }))
}

// Leases publishes the leaser's figures, read at each scrape: stats must
// be safe to call from any goroutine; actors.Leaser.Stats is. Call it
// once, and only with a store whose buckets are leased (PostgreSQL).
func (m *Metrics) Leases(stats func() messages.LeaseStats) {
	counter := func(name, help string, v func(messages.LeaseStats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help},
			func() float64 { return float64(v(stats())) })
	}
	m.reg.MustRegister(
		counter("lease_statements_total", "Lease renewal statements sent to the store, one per batch.",
			func(s messages.LeaseStats) int64 { return s.Statements }),
		counter("lease_renewals_total", "Lease renewals sent, one per client in a batch.",
			func(s messages.LeaseStats) int64 { return s.Renewals }),
		counter("lease_statement_failures_total", "Lease renewal statements that failed or got no answer.",
			func(s messages.LeaseStats) int64 { return s.FailedStatements }),
		counter("lease_decisions_total", "Requests decided on leased buckets.",
			func(s messages.LeaseStats) int64 { return s.Decisions }),
		counter("lease_waits_total", "Decisions on leased buckets that waited for a renewal (at most 20 ms).",
			func(s messages.LeaseStats) int64 { return s.Waited }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "lease_store_down",
			Help: "1 while lease renewals fail for want of the store (store_down_policy decides), else 0.",
		}, func() float64 {
			if stats().StoreDown {
				return 1
			}
			return 0
		}),
	)
}

// ConfigReloaded counts one configuration reload that succeeded or not.
func (m *Metrics) ConfigReloaded(ok bool) {
	if ok {
		m.reloads.WithLabelValues("success").Inc()
		return
	}
	m.reloads.WithLabelValues("failure").Inc()
}
