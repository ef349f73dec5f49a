package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/tollgate/tollgate/messages"
)

// Request errors: what is wrong with the request itself. Each is wrapped by
// a requestError that carries the message shown to the caller.
var (
	errBadRequest       = errors.New("bad request")
	errUnauthorized     = errors.New("unauthorized")
	errForbidden        = errors.New("forbidden")
	errRouteNotFound    = errors.New("no such route")
	errMethodNotAllowed = errors.New("method not allowed")
	errTooLarge         = errors.New("request body too large")
	errUnsupportedMedia = errors.New("unsupported media type")
)

// requestError is a request error whose message is written to the caller
// as it is. Unwrap gives the sentinel that picks the status.
type requestError struct {
	kind error
	msg  string
}

func (e *requestError) Error() string { return e.msg }
func (e *requestError) Unwrap() error { return e.kind }

// badRequest returns a 400 error with a message for the caller.
func badRequest(format string, args ...any) error {
	return &requestError{kind: errBadRequest, msg: fmt.Sprintf(format, args...)}
}

// clientError ties a Clients error to the client id it was about, so 404
// and 409 answers can name the client.
type clientError struct {
	id  string
	err error
}

func (e *clientError) Error() string { return fmt.Sprintf("client %q: %v", e.id, e.err) }
func (e *clientError) Unwrap() error { return e.err }

// statusRule maps errors matching target (errors.Is) to an HTTP status and
// the message the caller sees. message nil means the error's own text,
// which only request errors may use: store and actor errors can carry
// details callers must not see.
type statusRule struct {
	target  error
	status  int
	message func(err error) string
}

// statusRules is the one table from errors to HTTP statuses; the first
// match wins. Anything unmatched is a 500 with a generic message.
var statusRules = []statusRule{
	{errBadRequest, http.StatusBadRequest, nil},
	{errUnauthorized, http.StatusUnauthorized, nil},
	{errForbidden, http.StatusForbidden, nil},
	{errRouteNotFound, http.StatusNotFound, nil},
	{errMethodNotAllowed, http.StatusMethodNotAllowed, nil},
	{errTooLarge, http.StatusRequestEntityTooLarge, nil},
	{errUnsupportedMedia, http.StatusUnsupportedMediaType, nil},
	{messages.ErrNotFound, http.StatusNotFound, notFoundMessage},
	{messages.ErrConflict, http.StatusConflict, conflictMessage},
	{messages.ErrUnavailable, http.StatusServiceUnavailable, fixed("store unavailable")},
	{messages.ErrStopped, http.StatusServiceUnavailable, fixed("shutting down")},
	{context.DeadlineExceeded, http.StatusServiceUnavailable, fixed("store unavailable: timed out")},
	{context.Canceled, http.StatusServiceUnavailable, fixed("request canceled")},
}

func fixed(msg string) func(error) string { return func(error) string { return msg } }

func notFoundMessage(err error) string {
	if ce, ok := errors.AsType[*clientError](err); ok {
		return fmt.Sprintf("client %q not found", ce.id)
	}
	return "not found"
}

// conflictMessage says which value is taken when the error text tells. The
// store's unique-violation wording varies (PostgreSQL says "duplicate key"
// for every unique index), so only explicit column names are trusted.
func conflictMessage(err error) string {
	text := strings.ToLower(err.Error())
	id := ""
	if ce, ok := errors.AsType[*clientError](err); ok {
		id = ce.id
	}
	switch {
	case strings.Contains(text, "api_key") || strings.Contains(text, "api key") ||
		strings.Contains(text, "key_hash") || strings.Contains(text, "key hash"):
		return "api_key is already in use by another client"
	case strings.Contains(text, "client_id") || strings.Contains(text, "pkey"):
		return fmt.Sprintf("client %q already exists", id)
	default:
		return fmt.Sprintf("client %q already exists or its api_key is in use", id)
	}
}

// statusOf returns the status and caller-facing message for err.
func statusOf(err error) (int, string) {
	for _, rule := range statusRules {
		if !errors.Is(err, rule.target) {
			continue
		}
		if rule.message == nil {
			return rule.status, err.Error()
		}
		return rule.status, rule.message(err)
	}
	return http.StatusInternalServerError, "internal error"
}

// errorBody is every error answer of the admin API.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// writeError answers with err's status and logs it: request errors at
// debug, unavailability at warn, our own failures at error. Error texts
// never carry API keys (validation messages do not echo them).
func (a *admin) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := statusOf(err)
	level := slog.LevelDebug
	switch {
	case errors.Is(err, context.Canceled): // the caller went away
	case status == http.StatusServiceUnavailable:
		level = slog.LevelWarn
	case status >= 500:
		level = slog.LevelError
	}
	a.log.LogAttrs(r.Context(), level, "admin request failed",
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Any("err", err))
	writeJSON(w, status, errorBody{Code: status, Message: msg})
}

// writeJSON writes v as the answer. Answers may hold API keys in clear, so
// nothing on the way may cache them.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only a programming error gets here: every answer type marshals.
		status = http.StatusInternalServerError
		body = []byte(`{"code":500,"message":"internal error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
