package metrics

import (
	"maps"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/messages"
)

// Status classes: index status/100 for 1xx..5xx, 0 for anything else.
const numClasses = 6

var classNames = [numClasses]string{otherClass, "1xx", "2xx", "3xx", "4xx", "5xx"}

func classOf(status int) int {
	if c := status / 100; c >= 1 && c <= 5 {
		return c
	}
	return 0
}

// Attempt results, as pipeline names them (pipeline.AttemptSuccess, ...).
// They are repeated here rather than imported so that pipeline's tests
// can use this package without an import cycle; a test pins them.
var resultNames = [...]string{"success", "error", "timeout", "bad_status", "canceled"}

const numResults = len(resultNames)

func resultOf(r string) (int, bool) {
	switch r {
	case "success":
		return 0, true
	case "error":
		return 1, true
	case "timeout":
		return 2, true
	case "bad_status":
		return 3, true
	case "canceled":
		return 4, true
	}
	return 0, false
}

// ObserveRequest implements pipeline.Observer.
func (m *Metrics) ObserveRequest(b messages.Backend, status int, d time.Duration) {
	c := classOf(status)
	m.backends.get(b).requests[c].Inc()
	m.byClass[c].Observe(d.Seconds())
}

// ObserveAttempt implements pipeline.Observer.
func (m *Metrics) ObserveAttempt(b messages.Backend, result string, d time.Duration) {
	s := m.backends.get(b)
	s.duration.Observe(d.Seconds())
	if i, ok := resultOf(result); ok {
		s.attempts[i].Inc()
		return
	}
	m.attempts.WithLabelValues(s.label, result).Inc()
}

// Retry implements pipeline.Observer.
func (m *Metrics) Retry(b messages.Backend) { m.backends.get(b).retries.Inc() }

// RetryRefused implements pipeline.Observer.
func (m *Metrics) RetryRefused(messages.Backend) { m.retriesRefused.Inc() }

// RateLimited implements pipeline.Observer.
func (m *Metrics) RateLimited() { m.rateLimited.Inc() }

// AuthFailed implements pipeline.Observer.
func (m *Metrics) AuthFailed(reason string) { m.byReason.inc(reason) }

// authCounters are the auth failure counters by reason, resolved ahead.
type authCounters struct {
	vec                         *prometheus.CounterVec
	missing, malformed, unknown prometheus.Counter
}

func (a *authCounters) init(vec *prometheus.CounterVec) {
	a.vec = vec
	a.missing = vec.WithLabelValues("missing")
	a.malformed = vec.WithLabelValues("malformed")
	a.unknown = vec.WithLabelValues("unknown")
}

func (a *authCounters) inc(reason string) {
	switch reason {
	case "missing":
		a.missing.Inc()
	case "malformed":
		a.malformed.Inc()
	case "unknown":
		a.unknown.Inc()
	default:
		a.vec.WithLabelValues(reason).Inc()
	}
}

// backendSeries are one backend's request-path series, resolved once.
type backendSeries struct {
	url      *url.URL // the Backend.URL they were made for
	label    string
	requests [numClasses]prometheus.Counter
	attempts [numResults]prometheus.Counter
	duration prometheus.Observer
	retries  prometheus.Counter
}

// backendCache maps backend IDs to their series. Reads are a map lookup
// in an immutable snapshot; a miss (a backend's first request) copies the
// map under the mutex. Backends are few and change only on reload, so
// copying is cheaper than locking every read.
type backendCache struct {
	m    *Metrics
	none *backendSeries // for requests that reached no backend
	mu   sync.Mutex     // serializes writers of byID
	byID atomic.Pointer[map[int]*backendSeries]
}

func (c *backendCache) init(m *Metrics) {
	c.m = m
	c.none = m.newSeries(noBackend, nil)
	c.byID.Store(&map[int]*backendSeries{})
}

// get returns b's series. The URL pointer is compared too: a Backend's
// URL is fixed for its ID's lifetime, so a mismatch means a different
// backend under a reused ID (another registry, in tests).
func (c *backendCache) get(b messages.Backend) *backendSeries {
	if b.URL == nil {
		return c.none
	}
	if s := (*c.byID.Load())[b.ID]; s != nil && s.url == b.URL {
		return s
	}
	return c.add(b)
}

func (c *backendCache) add(b messages.Backend) *backendSeries {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.byID.Load()
	if s := old[b.ID]; s != nil && s.url == b.URL {
		return s
	}
	s := c.m.newSeries(b.URL.String(), b.URL)
	next := maps.Clone(old)
	next[b.ID] = s
	c.byID.Store(&next)
	return s
}

// remove forgets b's cached series; the series themselves stay exported,
// as counters of a backend no longer configured.
func (c *backendCache) remove(b messages.Backend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.byID.Load()
	if _, ok := old[b.ID]; !ok {
		return
	}
	next := maps.Clone(old)
	delete(next, b.ID)
	c.byID.Store(&next)
}

func (m *Metrics) newSeries(label string, u *url.URL) *backendSeries {
	s := &backendSeries{url: u, label: label}
	for c := range numClasses {
		s.requests[c] = m.requests.WithLabelValues(label, classNames[c])
	}
	if u == nil {
		// The pipeline reports no attempt without a backend; should one
		// come, it goes to an unregistered counter rather than a panic.
		discard := prometheus.NewCounter(prometheus.CounterOpts{Name: "discarded"})
		s.duration, s.retries = nopObserver{}, discard
		for i := range numResults {
			s.attempts[i] = discard
		}
		return s
	}
	for i, r := range resultNames {
		s.attempts[i] = m.attempts.WithLabelValues(label, r)
	}
	s.duration = m.attemptDuration.WithLabelValues(label)
	s.retries = m.retries.WithLabelValues(label)
	return s
}

type nopObserver struct{}

func (nopObserver) Observe(float64) {}
