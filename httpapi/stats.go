package httpapi

import (
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/tollgate/tollgate/messages"
)

// Traffic is the main port's recent traffic, counted in memory by this
// instance; package traffic implements it. Both methods are cheap and safe
// for concurrent use.
type Traffic interface {
	// Rates returns requests per second by status over the last minutes.
	Rates() messages.TrafficRates
	// Top returns up to n clients with the most admitted and refused
	// requests over the same window, largest first.
	Top(n int) (admitted, refused []messages.TopClient)
}

// Top list sizes of GET /stats/top-clients.
const (
	defaultTopClients = 10
	maxTopClients     = 100
)

// trafficJSON is GET /stats/traffic's answer: one count per second, oldest
// first, the last for the second that ended at End.
type trafficJSON struct {
	StepSeconds int                 `json:"step_seconds"`
	End         string              `json:"end"`
	Series      map[string][]uint64 `json:"series"`
}

func (a *admin) trafficRates(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) error {
	if a.traffic == nil {
		return &requestError{kind: errRouteNotFound, msg: "traffic stats are not enabled"}
	}
	r := a.traffic.Rates()
	writeJSON(w, http.StatusOK, trafficJSON{
		StepSeconds: 1,
		End:         r.End.UTC().Format(time.RFC3339Nano),
		Series: map[string][]uint64{
			"total": nonNil(r.Total), "1xx": nonNil(r.Class1xx), "2xx": nonNil(r.Class2xx),
			"3xx": nonNil(r.Class3xx), "4xx": nonNil(r.Class4xx), "5xx": nonNil(r.Class5xx),
			"429": nonNil(r.Status429),
		},
	})
	return nil
}

// nonNil keeps an empty series an empty JSON array rather than null.
func nonNil(s []uint64) []uint64 {
	if s == nil {
		return []uint64{}
	}
	return s
}

type topEntryJSON struct {
	ClientID string `json:"client_id"`
	Count    uint64 `json:"count"`
	Error    uint64 `json:"error"`
}

type topClientsJSON struct {
	WindowSeconds int            `json:"window_seconds"`
	Admitted      []topEntryJSON `json:"admitted"`
	Refused       []topEntryJSON `json:"refused"`
}

// topWindowSeconds is the window GET /stats/top-clients reports; package
// traffic counts over it (and up to one bucket more).
const topWindowSeconds = 300

func (a *admin) topClients(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	if a.traffic == nil {
		return &requestError{kind: errRouteNotFound, msg: "traffic stats are not enabled"}
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return badRequest("malformed query string: %v", err)
	}
	n := defaultTopClients
	if s := q.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > maxTopClients {
			return badRequest("limit: must be an integer from 1 to %d, got %.20q", maxTopClients, s)
		}
		n = v
	}
	admitted, refused := a.traffic.Top(n)
	writeJSON(w, http.StatusOK, topClientsJSON{
		WindowSeconds: topWindowSeconds,
		Admitted:      toTopJSON(admitted),
		Refused:       toTopJSON(refused),
	})
	return nil
}

func toTopJSON(list []messages.TopClient) []topEntryJSON {
	out := make([]topEntryJSON, 0, len(list))
	for _, e := range list {
		out = append(out, topEntryJSON{ClientID: e.ClientID, Count: e.Count, Error: e.Error})
	}
	return out
}
