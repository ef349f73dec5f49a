package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The fault tests put an instance under steady load while they break
// something, then account for every request: each one sent is either
// answered or failed with an error the fault explains, never lost.

// faultLoadOptions shapes a load: workers goroutines, each sending one GET
// every interval, cycling over keys, up to maxRequests in all.
type faultLoadOptions struct {
	workers     int
	every       time.Duration
	keys        []string
	maxRequests int64
}

// faultResult is one request of a load: which key, when, and its outcome.
type faultResult struct {
	key          int // index into faultLoadOptions.keys
	begun, ended time.Time
	status       int // 0 when err is set
	err          error
	failure      string // the body of an answer other than 200 and 429
}

// faultLoad is a running load generator. Its workers only send requests and
// record results; every check happens on the test goroutine afterwards.
type faultLoad struct {
	quit    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup

	mu      sync.Mutex
	results []faultResult
}

// startFaultLoad starts the workers against in. They stop at stop, at
// maxRequests, or when the test ends.
func startFaultLoad(t *testing.T, in *instance, hc *http.Client, o faultLoadOptions) *faultLoad {
	t.Helper()
	if o.maxRequests == 0 {
		o.maxRequests = 50_000
	}
	l := &faultLoad{quit: make(chan struct{})}
	for w := range o.workers {
		l.wg.Add(1)
		go l.work(in, hc, o, w) // stop waits for it
	}
	t.Cleanup(l.stop)
	return l
}

func (l *faultLoad) work(in *instance, hc *http.Client, o faultLoadOptions, w int) {
	defer l.wg.Done()
	tick := time.NewTicker(o.every)
	defer tick.Stop()
	for i := w; ; i += o.workers {
		select {
		case <-l.quit:
			return
		case <-tick.C:
		}
		if l.count() >= int(o.maxRequests) {
			return
		}
		k := i % len(o.keys)
		res := faultResult{key: k, begun: time.Now()}
		r, err := in.forward(hc, o.keys[k], "/load/"+strconv.Itoa(i), nil)
		res.ended, res.err = time.Now(), err
		if err == nil {
			res.status = r.status
			if r.status != http.StatusOK && r.status != http.StatusTooManyRequests {
				res.failure = firstLine(r.body)
			}
		}
		l.mu.Lock()
		l.results = append(l.results, res)
		l.mu.Unlock()
	}
}

// stop stops the workers and waits for them. It is idempotent.
func (l *faultLoad) stop() {
	l.stopped.Do(func() { close(l.quit) })
	l.wg.Wait()
}

// count is how many requests have finished so far.
func (l *faultLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.results)
}

// all returns a copy of the results so far.
func (l *faultLoad) all() []faultResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]faultResult(nil), l.results...)
}

// waitMore waits until n more requests have finished, as evidence that
// service continues. A busy machine (make test runs packages side by
// side) may take a while.
func (l *faultLoad) waitMore(t *testing.T, n int, what string) {
	t.Helper()
	from := l.count()
	faultEventually(t, 30*time.Second, func() bool { return l.count() >= from+n }, "%s; so far %s", what,
		faultLazy(func() string { return tallyFaults(l.all(), nil).String() }))
}

// faultTally counts outcomes.
type faultTally struct {
	sent, ok, limited, serverErrors, otherStatus, failed int
	maxLatency                                           time.Duration
	firstFailure                                         string
}

func (c faultTally) String() string {
	return fmt.Sprintf("sent=%d 200=%d 429=%d 5xx=%d other=%d failed=%d max_latency=%s",
		c.sent, c.ok, c.limited, c.serverErrors, c.otherStatus, c.failed, c.maxLatency.Round(time.Millisecond))
}

// tallyFaults counts the results that match keep (all when keep is nil).
func tallyFaults(results []faultResult, keep func(faultResult) bool) faultTally {
	var c faultTally
	for _, r := range results {
		if keep != nil && !keep(r) {
			continue
		}
		c.sent++
		c.maxLatency = max(c.maxLatency, r.ended.Sub(r.begun))
		switch {
		case r.err != nil:
			c.failed++
			if c.firstFailure == "" {
				c.firstFailure = r.err.Error()
			}
		case r.status == http.StatusOK:
			c.ok++
		case r.status == http.StatusTooManyRequests:
			c.limited++
		case r.status >= 500:
			c.serverErrors++
			if c.firstFailure == "" {
				c.firstFailure = "status " + strconv.Itoa(r.status) + ": " + r.failure
			}
		default:
			c.otherStatus++
		}
	}
	return c
}

// faultBegunBetween keeps the requests begun in [from, to).
func faultBegunBetween(from, to time.Time) func(faultResult) bool {
	return func(r faultResult) bool { return !r.begun.Before(from) && r.begun.Before(to) }
}

// faultForKey keeps the requests of one key.
func faultForKey(k int) func(faultResult) bool {
	return func(r faultResult) bool { return r.key == k }
}

// faultRefused reports whether err is a refused connection: what a client of
// a process that stopped listening sees.
func faultRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// faultOpenFDs counts this process's open file descriptors, or -1 where
// /proc is not available.
func faultOpenFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(entries)
}

// faultPatient makes health probes and attempts patient, for the fault
// tests that are not about slow backends: on a busy machine (make test
// runs packages side by side, under -race) a stall of a second or two
// must not take their only backend out or time an attempt out, answers
// they would count as lost requests.
func faultPatient(cfg map[string]any) {
	setLB(cfg, map[string]any{"health_check_interval": 1, "health_check_timeout": 2,
		"unhealthy_threshold": 3, "request_timeout": 5})
}

// faultLogOnFailure logs the last warnings and errors of an instance
// when the test fails, for a diagnosis from the test output alone.
func faultLogOnFailure(t *testing.T, in *instance) {
	t.Helper()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		var lines []string
		for _, l := range strings.Split(in.logs.String(), "\n") {
			if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
				lines = append(lines, l)
			}
		}
		t.Logf("last warnings and errors of the instance (%d in all):\n%s", len(lines),
			strings.Join(lines[max(0, len(lines)-40):], "\n"))
	})
}

// faultEventually is eventually with a deadline of its own, for
// conditions that take longer than waitFor on a busy machine.
func faultEventually(t *testing.T, within time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			require.FailNow(t, "condition not met within "+within.String(), msgAndArgs...)
		}
		<-tick.C
	}
}
