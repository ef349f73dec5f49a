package actors

import (
	"fmt"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// Outlier detection (SPEC 10) is passive, beside the probes: the request
// path counts each backend's failed answers in a row with an atomic in
// its messages.BackendLoad, and only when the count reaches the threshold
// does it send the registry a message. The registry ejects the backend
// from the snapshot for base_ejection_time × the times it was ejected
// (capped), within max_ejection_percent, and takes it back once its time
// is up and a probe passes.

// maxEjectionFactor caps an ejection's length at this many times
// base_ejection_time.
const maxEjectionFactor = 10

// ObserveAnswer is the request path's report of one attempt on b that got
// an answer or timed out: failed is true for a 502, 503 or 504 answer and
// for a timeout. It is lock-free and allocation-free; it never blocks:
// when the registry is behind, a report is dropped and the next threshold
// crossing (another ConsecutiveFailures failures) asks again. A Backend
// not made by the registry (nil Load) is ignored.
func (r *Registry) ObserveAnswer(b messages.Backend, failed bool) {
	if b.Load == nil {
		return
	}
	if !failed {
		if b.Load.Failures.Load() != 0 { // no write, no cache-line bounce, in the common case
			b.Load.Failures.Store(0)
		}
		return
	}
	n := b.Load.Failures.Add(1)
	if t := r.threshold.Load(); t <= 0 || n%t != 0 {
		return
	}
	select {
	case r.outliers <- b.ID:
	default:
	}
}

// serving reports whether the backend takes traffic: in the snapshot.
func (st *registryBackend) serving() bool {
	return st.healthy && st.ejectedUntil.IsZero()
}

// eject takes backend id out of the snapshot, unless it is gone or
// ejected already, detection is off, or max_ejection_percent (or the last
// backend serving) forbids it.
func (r *Registry) eject(id int, now time.Time) {
	st, ok := r.backends[id]
	o := r.cfg.Outlier
	if !ok || !st.ejectedUntil.IsZero() || o.ConsecutiveFailures == 0 {
		return
	}
	log := r.logger.With("backend", st.backend.URL.String())
	if ejected, limit := r.ejectedCount(), r.maxEjected(); ejected >= limit || (st.serving() && r.servingCount() <= 1) {
		// Debug: a lone failing backend asks again every threshold
		// failures, and a warning each time would flood the log.
		log.Debug("outlier not ejected: too many backends out",
			"ejected", ejected, "max_ejection_percent", o.MaxEjectionPercent)
		return
	}
	st.ejections++
	d := o.BaseEjectionTime * time.Duration(min(st.ejections, maxEjectionFactor))
	st.ejectedUntil = now.Add(d)
	st.ejectReason = fmt.Sprintf("%d failed answers in a row (502, 503, 504 or timeout)", o.ConsecutiveFailures)
	st.returning = false
	st.epoch++ // a probe already in flight does not bring it back
	r.publish()
	r.obs.BackendEjected(st.backend, d)
	r.obs.BackendUp(st.backend, false)
	log.Warn("backend ejected", "reason", "outlier", "failures", o.ConsecutiveFailures,
		"ejection", d.String(), "ejections", st.ejections)
	r.armEjectTimer(now)
}

// maxEjected is how many backends may be ejected at once:
// max_ejection_percent of them, rounded down, leaving at least one.
func (r *Registry) maxEjected() int {
	n := len(r.order)
	return min(n*r.cfg.Outlier.MaxEjectionPercent/100, n-1)
}

func (r *Registry) ejectedCount() int {
	n := 0
	for _, st := range r.backends {
		if !st.ejectedUntil.IsZero() {
			n++
		}
	}
	return n
}

func (r *Registry) servingCount() int {
	n := 0
	for _, st := range r.backends {
		if st.serving() {
			n++
		}
	}
	return n
}

// ejectionsDue asks a probe of every backend whose ejection time is up;
// the first passing one ends the ejection (handleResult).
func (r *Registry) ejectionsDue(now time.Time) {
	for _, id := range r.order {
		st := r.backends[id]
		if !st.ejectedUntil.IsZero() && !st.returning && !now.Before(st.ejectedUntil) {
			st.returning = true
			r.requestProbe(st)
		}
	}
	r.armEjectTimer(now)
}

// armEjectTimer sets the timer to the earliest ejection end still ahead.
func (r *Registry) armEjectTimer(now time.Time) {
	var next time.Time
	for _, st := range r.backends {
		if st.ejectedUntil.IsZero() || st.returning {
			continue
		}
		if next.IsZero() || st.ejectedUntil.Before(next) {
			next = st.ejectedUntil
		}
	}
	if r.ejectAt == nil { // before Run: Run arms nothing until an ejection
		return
	}
	r.ejectAt.Stop()
	if !next.IsZero() {
		r.ejectAt.Reset(max(next.Sub(now), 0))
	}
}

// release ends st's ejection: it takes traffic again if healthy.
func (r *Registry) release(st *registryBackend, why string) {
	st.ejectedUntil, st.ejectReason, st.returning = time.Time{}, "", false
	st.backend.Load.Failures.Store(0)
	r.publish()
	r.obs.BackendUp(st.backend, st.healthy)
	r.logger.Info("backend returned after ejection", "backend", st.backend.URL.String(), "why", why)
}

// releaseAll ends every ejection (detection turned off).
func (r *Registry) releaseAll(why string) {
	for _, st := range r.backends {
		if !st.ejectedUntil.IsZero() {
			r.release(st, why)
		}
	}
}
