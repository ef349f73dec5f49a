package httpapi

import (
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/tollgate/tollgate/messages"
)

// List paging bounds (SPEC 4).
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// clientJSON is a client as the admin API shows it. Exactly one of APIKey
// and APIKeyPrefix is set: the prefix when keys are hashed at rest and
// the answer is not the one that created or rotated the key.
type clientJSON struct {
	ClientID     string  `json:"client_id"`
	APIKey       string  `json:"api_key,omitempty"`
	APIKeyPrefix string  `json:"api_key_prefix,omitempty"`
	RatePerSec   float64 `json:"rate_per_sec"`
	Capacity     int64   `json:"capacity"`
	Tokens       float64 `json:"tokens"`
	LastRefill   string  `json:"last_refill"`
}

// toClientJSON renders c. Tokens are rounded to 3 decimals: continuous
// refill makes values like 19.999999999 that help nobody.
func toClientJSON(c messages.Client) clientJSON {
	out := clientJSON{
		ClientID:   c.ID,
		APIKey:     c.APIKey,
		RatePerSec: c.RatePerSec,
		Capacity:   c.Capacity,
		Tokens:     math.Round(c.Tokens*1000) / 1000,
		LastRefill: c.LastRefill.UTC().Format(time.RFC3339Nano),
	}
	if c.APIKey == "" {
		out.APIKeyPrefix = c.KeyPrefix
	}
	return out
}

type clientListJSON struct {
	Clients []clientJSON `json:"clients"`
	// Next is the after value of the following page: the last client_id
	// of a full page, "" when this page is the last.
	Next string `json:"next"`
}

// newAPIKey returns a fresh key: 256 random bits, base64url without
// padding (43 characters, safe in headers and URLs).
func newAPIKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+).
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (a *admin) createClient(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	data, err := readBody(w, r)
	if err != nil {
		return err
	}
	f, err := decodeCreate(data)
	if err != nil {
		return err
	}
	rate, capacity := a.defaults()
	if f.Rate != nil {
		rate = *f.Rate
	}
	if f.Capacity != nil {
		capacity = *f.Capacity
	}
	key := newAPIKey()
	if f.APIKey != nil {
		key = *f.APIKey
	}
	c := messages.Client{
		ID:         *f.ID,
		APIKey:     key,
		KeyHash:    messages.HashKey(key),
		KeyPrefix:  messages.KeyPrefix(key),
		RatePerSec: rate,
		Capacity:   capacity,
		Tokens:     float64(capacity),
		LastRefill: a.now().UTC(),
	}
	created, err := a.clients.CreateClient(r.Context(), c)
	if err != nil {
		return &clientError{id: c.ID, err: err}
	}
	a.logWrite(r, "client created", created)
	w.Header().Set("Location", "/clients/"+url.PathEscape(created.ID))
	writeJSON(w, http.StatusCreated, toClientJSON(created))
	return nil
}

func (a *admin) getClient(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	id := ps.ByName("client_id")
	if err := validateClientID("client_id", id); err != nil {
		return err
	}
	c, err := a.clients.GetClient(r.Context(), id)
	if err != nil {
		return &clientError{id: id, err: err}
	}
	writeJSON(w, http.StatusOK, toClientJSON(c))
	return nil
}

func (a *admin) listClients(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	q, err := parseListQuery(r.URL.RawQuery)
	if err != nil {
		return err
	}
	after := q.after
	if q.prefix != "" {
		after = max(after, beforePrefix(q.prefix))
	}
	list, err := a.clients.ListClients(r.Context(), after, q.limit)
	if err != nil {
		return err
	}
	full := len(list) >= q.limit
	// Ids sort bytewise, so those with the prefix come in one run: the
	// first id without it ends the run and the listing.
	for i, c := range list {
		if !strings.HasPrefix(c.ID, q.prefix) {
			list, full = list[:i], false
			break
		}
	}
	out := clientListJSON{Clients: make([]clientJSON, 0, len(list))}
	for _, c := range list {
		out.Clients = append(out.Clients, toClientJSON(c))
	}
	if full {
		out.Next = list[len(list)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// listQuery is GET /clients' query.
type listQuery struct {
	after, prefix string
	limit         int
}

// parseListQuery reads ?limit=&after=&prefix=. Other parameters are
// ignored, as most APIs do; malformed values are 400.
func parseListQuery(rawQuery string) (listQuery, error) {
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return listQuery{}, badRequest("malformed query string: %v", err)
	}
	q := listQuery{limit: defaultPageSize, after: values.Get("after"), prefix: values.Get("prefix")}
	if s := values.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxPageSize {
			return listQuery{}, badRequest("limit: must be an integer from 1 to %d, got %.20q", maxPageSize, s)
		}
		q.limit = n
	}
	for _, f := range []struct{ name, value string }{{"after", q.after}, {"prefix", q.prefix}} {
		if f.value == "" {
			continue
		}
		if err := validateClientID(f.name, f.value); err != nil {
			return listQuery{}, err
		}
	}
	return q, nil
}

// beforePrefix returns an after value below every valid id that starts
// with prefix and above every valid id below them: prefix with its last
// byte lowered by one, then '~', which sorts after every byte an id may
// hold. prefix is a valid, non-empty id.
func beforePrefix(prefix string) string {
	last := len(prefix) - 1
	return prefix[:last] + string(prefix[last]-1) + "~"
}

// patchClientByBody serves PATCH /clients, the seed's form: the id is the
// body's client_id.
func (a *admin) patchClientByBody(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	data, err := readBody(w, r)
	if err != nil {
		return err
	}
	f, err := decodePatch(data)
	if err != nil {
		return err
	}
	if f.ID == nil {
		return badRequest("client_id: is required (or use PATCH /clients/{client_id})")
	}
	return a.updateLimits(w, r, *f.ID, f)
}

// patchClientByPath serves PATCH /clients/{client_id}; a client_id in the
// body is allowed only if it names the same client.
func (a *admin) patchClientByPath(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	id := ps.ByName("client_id")
	if err := validateClientID("client_id", id); err != nil {
		return err
	}
	data, err := readBody(w, r)
	if err != nil {
		return err
	}
	f, err := decodePatch(data)
	if err != nil {
		return err
	}
	if f.ID != nil && *f.ID != id {
		return badRequest("client_id: %q in the body does not match %q in the path", *f.ID, id)
	}
	return a.updateLimits(w, r, id, f)
}

func (a *admin) updateLimits(w http.ResponseWriter, r *http.Request, id string, f clientFields) error {
	c, err := a.clients.UpdateLimits(r.Context(), id, messages.Limits{RatePerSec: f.Rate, Capacity: f.Capacity})
	if err != nil {
		return &clientError{id: id, err: err}
	}
	a.logWrite(r, "client limits updated", c)
	writeJSON(w, http.StatusOK, toClientJSON(c))
	return nil
}

func (a *admin) deleteClient(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	id := ps.ByName("client_id")
	if err := validateClientID("client_id", id); err != nil {
		return err
	}
	if err := a.clients.DeleteClient(r.Context(), id); err != nil {
		return &clientError{id: id, err: err}
	}
	a.log.LogAttrs(r.Context(), slog.LevelInfo, "client deleted", slog.String("client_id", id))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// rotateKey serves POST /clients/{client_id}/rotate-key. A body, if any,
// is ignored: the new key is always generated here.
func (a *admin) rotateKey(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	id := ps.ByName("client_id")
	if err := validateClientID("client_id", id); err != nil {
		return err
	}
	c, err := a.clients.RotateKey(r.Context(), id, newAPIKey())
	if err != nil {
		return &clientError{id: id, err: err}
	}
	a.logWrite(r, "client key rotated", c)
	writeJSON(w, http.StatusOK, toClientJSON(c))
	return nil
}

// logWrite records an admin write. It logs the client's id and limits,
// never its key or key prefix.
func (a *admin) logWrite(r *http.Request, msg string, c messages.Client) {
	a.log.LogAttrs(r.Context(), slog.LevelInfo, msg,
		slog.String("client_id", c.ID),
		slog.Float64("rate_per_sec", c.RatePerSec),
		slog.Int64("capacity", c.Capacity))
}
