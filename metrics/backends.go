package metrics

import (
	"time"

	"github.com/tollgate/tollgate/messages"
)

// BackendUp implements actors.RegistryObserver.
func (m *Metrics) BackendUp(b messages.Backend, up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.backendUp.WithLabelValues(b.URL.String()).Set(v)
}

// BackendRemoved implements actors.RegistryObserver: the backend's up
// gauge goes, so a removed backend does not look down forever. Its
// counters stay until restart, as Prometheus expects of counters.
func (m *Metrics) BackendRemoved(b messages.Backend) {
	m.backendUp.DeleteLabelValues(b.URL.String())
	m.backends.remove(b)
}

// ObserveProbe implements actors.RegistryObserver.
func (m *Metrics) ObserveProbe(b messages.Backend, passed bool, d time.Duration) {
	result := "failure"
	if passed {
		result = "success"
	}
	m.healthDuration.WithLabelValues(b.URL.String(), result).Observe(d.Seconds())
}

// BackendEjected implements actors.RegistryObserver.
func (m *Metrics) BackendEjected(b messages.Backend, _ time.Duration) {
	m.ejections.WithLabelValues(b.URL.String()).Inc()
}

// ObserveSave implements actors.PersisterObserver. Failed writes count in
// tollgate_store_errors_total through the instrumented store; here only
// their duration and size are observed, like every write's.
func (m *Metrics) ObserveSave(clients int, d time.Duration, _ error) {
	m.saveDuration.Observe(d.Seconds())
	m.saveBatchSize.Observe(float64(clients))
}
