package main

import (
	"time"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/metrics"
	"github.com/tollgate/tollgate/pipeline"
	"github.com/tollgate/tollgate/traffic"
)

// observers feeds the pipeline's measurements to the Prometheus metrics
// and to the dashboard's in-memory traffic counters. Only the traffic
// counters see client ids: they bound their memory, a metric label would
// not.
type observers struct {
	*metrics.Metrics
	traffic *traffic.Counters
}

var (
	_ pipeline.Observer          = observers{}
	_ pipeline.AdmissionObserver = observers{}
)

func (o observers) ObserveRequest(b messages.Backend, status int, d time.Duration) {
	o.Metrics.ObserveRequest(b, status, d)
	o.traffic.ObserveRequest(status)
}

func (o observers) ObserveAdmission(clientID string, allowed bool) {
	o.traffic.ObserveAdmission(clientID, allowed)
}
