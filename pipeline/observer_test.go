package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
)

// recorder is an Observer that writes what it sees as short lines.
type recorder struct {
	mu     sync.Mutex
	events []string
	done   chan struct{} // receives one value per ObserveRequest
}

var _ Observer = (*recorder)(nil)

func newRecorder() *recorder { return &recorder{done: make(chan struct{}, 16)} }

func host(b messages.Backend) string {
	if b.URL == nil {
		return "none"
	}
	return b.URL.Host
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
}

func (r *recorder) ObserveRequest(b messages.Backend, status int, d time.Duration) {
	if d <= 0 {
		r.add("request with duration %v", d)
	}
	r.add("request %s %d", host(b), status)
	r.done <- struct{}{}
}

func (r *recorder) ObserveAttempt(b messages.Backend, result string, d time.Duration) {
	if d <= 0 {
		r.add("attempt with duration %v", d)
	}
	r.add("attempt %s %s", host(b), result)
}

func (r *recorder) Retry(b messages.Backend)        { r.add("retry %s", host(b)) }
func (r *recorder) RetryRefused(b messages.Backend) { r.add("retry_refused %s", host(b)) }
func (r *recorder) RateLimited()                    { r.add("rate_limited") }
func (r *recorder) AuthFailed(reason string)        { r.add("auth %s", reason) }

// wait returns the events of one finished request: ObserveRequest runs
// after the answer is written, so the client may see it first.
func (r *recorder) wait(t *testing.T) []string {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for ObserveRequest")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

func TestObserverSeesEveryOutcome(t *testing.T) {
	bad := newBackend(t, answering(http.StatusServiceUnavailable, "busy"))
	bad2 := newBackend(t, answering(http.StatusBadGateway, "down"))
	good := newBackend(t, answering(http.StatusOK, "ok"))
	dead := deadURL(t)
	hostOf := func(u string) string { return strings.TrimPrefix(u, "http://") }
	refuse := func(context.Context, string) (messages.Decision, error) {
		return messages.Decision{ClientID: testClientID, Limit: 1, RetryAfter: time.Second}, nil
	}
	tests := []struct {
		name     string
		backends []string
		admit    func(context.Context, string) (messages.Decision, error)
		auth     string
		want     []string
	}{
		{name: "missing key", backends: []string{good.URL}, auth: "-",
			want: []string{"auth missing", "request none 401"}},
		{name: "malformed key", backends: []string{good.URL}, auth: "Bearer two words",
			want: []string{"auth malformed", "request none 401"}},
		{name: "unknown key", backends: []string{good.URL}, auth: "Bearer unknown-key-0123456789",
			want: []string{"auth unknown", "request none 401"}},
		{name: "rate limited", backends: []string{good.URL}, admit: refuse,
			want: []string{"rate_limited", "request none 429"}},
		{name: "no backend", backends: nil,
			want: []string{"request none 503"}},
		{name: "served", backends: []string{good.URL},
			want: []string{"attempt " + hostOf(good.URL) + " success", "request " + hostOf(good.URL) + " 200"}},
		{name: "retried", backends: []string{bad.URL, good.URL}, want: []string{
			"attempt " + hostOf(bad.URL) + " bad_status", "retry " + hostOf(bad.URL),
			"attempt " + hostOf(good.URL) + " success", "request " + hostOf(good.URL) + " 200"}},
		{name: "every attempt answered badly", backends: []string{bad.URL, bad2.URL}, want: []string{
			"attempt " + hostOf(bad.URL) + " bad_status", "retry " + hostOf(bad.URL),
			"attempt " + hostOf(bad2.URL) + " bad_status", "request " + hostOf(bad2.URL) + " 502"}},
		{name: "connection refused", backends: []string{dead}, want: []string{
			"attempt " + hostOf(dead) + " error", "request " + hostOf(dead) + " 502"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			h := newHarness(t, setup{backends: tt.backends, admit: tt.admit,
				opts: Options{MaxRetries: 1, Observer: rec}})
			r := request{}
			switch tt.auth {
			case "":
			case "-":
				r.header = http.Header{"Authorization": {""}}
			default:
				r.header = http.Header{"Authorization": {tt.auth}}
			}
			_, _ = h.do(t, r)
			assert.Equal(t, tt.want, rec.wait(t))
		})
	}
}

func TestObserverSeesTimeouts(t *testing.T) {
	release := make(chan struct{})
	slow := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) })
	rec := newRecorder()
	h := newHarness(t, setup{backends: []string{slow.URL},
		opts: Options{RequestTimeout: 50 * time.Millisecond, Observer: rec}})
	res, _ := h.do(t, request{})
	assert.Equal(t, http.StatusGatewayTimeout, res.StatusCode)
	host := strings.TrimPrefix(slow.URL, "http://")
	assert.Equal(t, []string{"attempt " + host + " timeout", "request " + host + " 504"}, rec.wait(t))
}

// countingHandler is a slog.Handler that counts the records it is given.
type countingHandler struct {
	level   slog.Level
	handled atomic.Int64
}

func (c *countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= c.level }
func (c *countingHandler) Handle(context.Context, slog.Record) error {
	c.handled.Add(1)
	return nil
}
func (c *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *countingHandler) WithGroup(string) slog.Handler      { return c }

// TestAccessLogOffBuildsNoLineAtInfo: with access_log false and the level
// at info, a served request makes no log record at all: the access line's
// attributes are built only after the level check.
func TestAccessLogOffBuildsNoLineAtInfo(t *testing.T) {
	good := newBackend(t, answering(http.StatusOK, "ok"))
	for _, accessLog := range []bool{false, true} {
		t.Run(fmt.Sprintf("access_log=%v", accessLog), func(t *testing.T) {
			counter := &countingHandler{level: slog.LevelInfo}
			rec := newRecorder()
			h := newHarness(t, setup{backends: []string{good.URL},
				opts: Options{Logger: slog.New(counter), AccessLog: accessLog, Observer: rec}})
			res, _ := h.do(t, request{})
			require.Equal(t, http.StatusOK, res.StatusCode)
			rec.wait(t) // the access line, if any, is written before this
			want := int64(0)
			if accessLog {
				want = 1
			}
			assert.Equal(t, want, counter.handled.Load())
		})
	}
}

func TestAccessLogCountsBodyBytes(t *testing.T) {
	good := newBackend(t, answering(http.StatusOK, "twelve bytes"))
	logs := &logBuffer{}
	rec := newRecorder()
	h := newHarness(t, setup{backends: []string{good.URL},
		opts: Options{Logger: newLogger(logs), AccessLog: true, Observer: rec}})
	_, body := h.do(t, request{})
	require.Equal(t, "twelve bytes", body)
	rec.wait(t)
	_, errBody := h.do(t, request{header: http.Header{"Authorization": {""}}})
	rec.wait(t)

	var got []any
	for _, l := range logs.lines(t) {
		got = append(got, l["bytes"])
	}
	assert.Equal(t, []any{12.0, float64(len(errBody))}, got)
}

// admissionRecorder is a recorder that also implements AdmissionObserver.
type admissionRecorder struct{ *recorder }

var _ AdmissionObserver = admissionRecorder{}

func (r admissionRecorder) ObserveAdmission(clientID string, allowed bool) {
	r.add("admission %s %t", clientID, allowed)
}

func TestAdmissionObserverSeesEachDecisionWithItsClient(t *testing.T) {
	good := newBackend(t, answering(http.StatusOK, "ok"))
	host := strings.TrimPrefix(good.URL, "http://")
	refuse := func(context.Context, string) (messages.Decision, error) {
		return messages.Decision{ClientID: testClientID, Limit: 1, RetryAfter: time.Second}, nil
	}
	tests := []struct {
		name  string
		admit func(context.Context, string) (messages.Decision, error)
		auth  string
		want  []string
	}{
		{name: "admitted", want: []string{"admission " + testClientID + " true",
			"attempt " + host + " success", "request " + host + " 200"}},
		{name: "refused", admit: refuse, want: []string{"admission " + testClientID + " false",
			"rate_limited", "request none 429"}},
		{name: "no decision without a key", auth: "Bearer two words",
			want: []string{"auth malformed", "request none 401"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := admissionRecorder{newRecorder()}
			h := newHarness(t, setup{backends: []string{good.URL}, admit: tt.admit,
				opts: Options{Observer: rec}})
			r := request{}
			if tt.auth != "" {
				r.header = http.Header{"Authorization": {tt.auth}}
			}
			_, _ = h.do(t, r)
			assert.Equal(t, tt.want, rec.wait(t))
		})
	}
}
