package main

import (
	"time"

	"github.com/tollgate/tollgate/actors"
	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/metrics"
	"github.com/tollgate/tollgate/pipeline"
	"github.com/tollgate/tollgate/traffic"
)

// observers feeds the pipeline's measurements to the Prometheus metrics,
// to the dashboard's in-memory traffic counters, and each attempt's result
// to the registry's outlier detection (SPEC 10), which counts failed
// answers in a row with atomics and hears of nothing else until a backend
// reaches the threshold. Only the traffic counters see client ids: they
// bound their memory, a metric label would not.
type observers struct {
	*metrics.Metrics
	traffic  *traffic.Counters
	registry *actors.Registry
}

var (
	_ pipeline.Observer          = observers{}
	_ pipeline.AdmissionObserver = observers{}
)

func (o observers) ObserveRequest(b messages.Backend, status int, d time.Duration) {
	o.Metrics.ObserveRequest(b, status, d)
	o.traffic.ObserveRequest(status)
}

// ObserveAttempt implements pipeline.Observer. A connection error is left
// to the passive health check; a client that went away says nothing of
// the backend.
func (o observers) ObserveAttempt(b messages.Backend, result string, d time.Duration) {
	o.Metrics.ObserveAttempt(b, result, d)
	switch result {
	case pipeline.AttemptSuccess:
		o.registry.ObserveAnswer(b, false)
	case pipeline.AttemptBadStatus, pipeline.AttemptTimeout:
		o.registry.ObserveAnswer(b, true)
	}
}

func (o observers) ObserveAdmission(clientID string, allowed bool) {
	o.traffic.ObserveAdmission(clientID, allowed)
}
