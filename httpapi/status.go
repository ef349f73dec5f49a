package httpapi

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/tollgate/tollgate/messages"
)

// readyTimeout bounds the store check of /readyz, so a hung store makes
// the probe fail rather than hang past the orchestrator's own timeout.
const readyTimeout = 2 * time.Second

// backendJSON is one backend as GET /backends shows it. Times are null
// before they happened.
type backendJSON struct {
	URL                  string  `json:"url"`
	Healthy              bool    `json:"healthy"`
	LastCheck            *string `json:"last_check"`
	LastError            string  `json:"last_error"`
	LastStatus           int     `json:"last_status"`
	LastLatencyMS        float64 `json:"last_latency_ms"`
	ConsecutiveFailures  int     `json:"consecutive_failures"`
	ConsecutiveSuccesses int     `json:"consecutive_successes"`
	Since                *string `json:"since"`
	Weight               int     `json:"weight"`
	// EjectedUntil is null unless outlier detection has ejected the
	// backend; past it, the next passing probe brings the backend back.
	EjectedUntil   *string `json:"ejected_until"`
	EjectionReason string  `json:"ejection_reason"`
	Ejections      int     `json:"ejections"`
}

func toBackendJSON(s messages.BackendStatus) backendJSON {
	return backendJSON{
		URL:                  s.URL,
		Healthy:              s.Healthy,
		LastCheck:            timeOrNull(s.LastCheck),
		LastError:            s.LastError,
		LastStatus:           s.LastStatus,
		LastLatencyMS:        math.Round(float64(s.LastLatency)/float64(time.Microsecond)) / 1000,
		ConsecutiveFailures:  s.ConsecutiveFailures,
		ConsecutiveSuccesses: s.ConsecutiveSuccesses,
		Since:                timeOrNull(s.Since),
		Weight:               max(s.Weight, 1),
		EjectedUntil:         timeOrNull(s.EjectedUntil),
		EjectionReason:       s.EjectedReason,
		Ejections:            s.Ejections,
	}
}

func timeOrNull(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

func (a *admin) listBackends(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	statuses, err := a.backends.Statuses(r.Context())
	if err != nil {
		return err
	}
	out := struct {
		Backends []backendJSON `json:"backends"`
	}{Backends: make([]backendJSON, 0, len(statuses))}
	for _, s := range statuses {
		out.Backends = append(out.Backends, toBackendJSON(s))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *admin) healthz(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) error {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

// readyJSON is the /readyz answer. A 503 also carries code and message, so
// it reads like every other admin error.
type readyJSON struct {
	Code    int               `json:"code,omitempty"`
	Message string            `json:"message,omitempty"`
	Status  string            `json:"status"`
	Checks  map[string]string `json:"checks"`
}

// readyz reports ready when the store answers and at least one backend is
// healthy (SPEC 4). Failure details stay in the debug log: the probe is
// open to everyone and store errors can name hosts.
func (a *admin) readyz(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	out := readyJSON{Status: "ready", Checks: map[string]string{"store": "ok", "backends": "ok"}}
	var failed []string
	if err := a.clients.Ready(ctx); err != nil {
		a.log.LogAttrs(r.Context(), slog.LevelDebug, "readiness: store unreachable", slog.Any("err", err))
		out.Checks["store"] = "unreachable"
		failed = append(failed, "store unreachable")
	}
	if len(a.backends.Healthy()) == 0 {
		out.Checks["backends"] = "no healthy backend"
		failed = append(failed, "no healthy backend")
	}
	if len(failed) == 0 {
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	out.Code = http.StatusServiceUnavailable
	out.Status = "not ready"
	out.Message = "not ready: " + strings.Join(failed, "; ")
	writeJSON(w, http.StatusServiceUnavailable, out)
	return nil
}

func (a *admin) serveMetrics(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	if a.metrics == nil {
		return &requestError{kind: errRouteNotFound, msg: "metrics are not enabled"}
	}
	a.metrics.ServeHTTP(w, r)
	return nil
}
