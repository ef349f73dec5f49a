package actors

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/config"
	"github.com/tollgate/tollgate/messages"
)

// outlierConfig is a registry of urls with outlier detection at SPEC 10's
// defaults and probes every 10 s.
func outlierConfig(urls ...string) RegistryConfig {
	cfg := regConfig(10*time.Second, 2, urls...)
	cfg.Outlier = config.Outlier{ConsecutiveFailures: 5, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 50}
	return cfg
}

// backendOf returns the registry's Backend for rawURL, as the request path
// holds it.
func backendOf(t *testing.T, r *Registry, rawURL string) messages.Backend {
	t.Helper()
	for _, b := range r.Healthy() {
		if b.URL.String() == rawURL {
			return b
		}
	}
	require.Failf(t, "not serving", "backend %s not in the snapshot", rawURL)
	return messages.Backend{}
}

// answer reports n answers on b, failed or not, and lets the loop act.
func answer(r *Registry, b messages.Backend, n int, failed bool) {
	for range n {
		r.ObserveAnswer(b, failed)
	}
	synctest.Wait()
}

func TestOutlierEjectedAfterConsecutiveFailuresThenReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes() // every probe passes: health alone never ejects
		r, _ := startRegistry(t, outlierConfig("http://a.test", "http://b.test", "http://c.test"), fake.probe, testLogger(t))
		synctest.Wait()
		a := backendOf(t, r, "http://a.test")

		answer(r, a, 4, true)
		assert.Len(t, r.Healthy(), 3, "4 failures are not enough")
		start := time.Now()
		answer(r, a, 1, true)
		assert.Equal(t, []string{"http://b.test", "http://c.test"}, healthyURLs(r), "ejected after the 5th")
		st := statusOf(t, r, "http://a.test")
		assert.True(t, st.Healthy, "its probes still pass")
		assert.Equal(t, start.Add(30*time.Second), st.EjectedUntil)
		assert.Contains(t, st.EjectedReason, "5 failed answers in a row")
		assert.Equal(t, 1, st.Ejections)

		time.Sleep(29 * time.Second) // probes pass meanwhile, at 10 s and 20 s
		synctest.Wait()
		assert.Len(t, r.Healthy(), 2, "back only when the time is up")
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Len(t, r.Healthy(), 3, "the time is up and the probe asked then passed")
		st = statusOf(t, r, "http://a.test")
		assert.True(t, st.EjectedUntil.IsZero())
		assert.Empty(t, st.EjectedReason)

		// Its count starts over, and the second ejection lasts twice as long.
		answer(r, a, 4, true)
		assert.Len(t, r.Healthy(), 3)
		answer(r, a, 1, true)
		assert.Equal(t, time.Now().Add(60*time.Second), statusOf(t, r, "http://a.test").EjectedUntil)
	})
}

func TestOutlierSuccessResetsTheCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, _ := startRegistry(t, outlierConfig("http://a.test", "http://b.test"), newFakeProbes().probe, testLogger(t))
		synctest.Wait()
		a := backendOf(t, r, "http://a.test")
		answer(r, a, 4, true)
		answer(r, a, 1, false)
		answer(r, a, 4, true)
		assert.Len(t, r.Healthy(), 2)
		assert.True(t, statusOf(t, r, "http://a.test").EjectedUntil.IsZero())
	})
}

func TestOutlierEjectionWaitsForAPassingProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		r, _ := startRegistry(t, outlierConfig("http://a.test", "http://b.test"), fake.probe, testLogger(t))
		synctest.Wait()
		answer(r, backendOf(t, r, "http://a.test"), 5, true)
		require.Len(t, r.Healthy(), 1)

		fake.set("a.test", fakeAnswer{status: 503})
		time.Sleep(35 * time.Second)
		synctest.Wait()
		assert.Equal(t, []string{"http://b.test"}, healthyURLs(r), "time up, probe failing: still out")

		fake.set("a.test", fakeAnswer{})
		time.Sleep(10 * time.Second) // the next periodic probe
		synctest.Wait()
		assert.Len(t, r.Healthy(), 2)
	})
}

func TestOutlierMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		name    string
		percent int
		urls    []string
		ejected int
	}{
		{"two of two failing, at most one", 50, []string{"http://a.test", "http://b.test"}, 1},
		{"100 percent still leaves one", 100, []string{"http://a.test", "http://b.test"}, 1},
		{"a lone backend stays", 100, []string{"http://a.test"}, 0},
		{"50 percent of four", 50, []string{"http://a.test", "http://b.test", "http://c.test", "http://d.test"}, 2},
		{"percent rounds down", 50, []string{"http://a.test", "http://b.test", "http://c.test"}, 1},
		{"0 percent ejects none", 0, []string{"http://a.test", "http://b.test"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := outlierConfig(tt.urls...)
				cfg.Outlier.MaxEjectionPercent = tt.percent
				r, _ := startRegistry(t, cfg, newFakeProbes().probe, testLogger(t))
				synctest.Wait()
				for _, b := range r.Healthy() {
					answer(r, b, 5, true)
				}
				assert.Len(t, r.Healthy(), len(tt.urls)-tt.ejected)
				// More failures of those left change nothing.
				for _, b := range r.Healthy() {
					answer(r, b, 10, true)
				}
				assert.Len(t, r.Healthy(), len(tt.urls)-tt.ejected)
			})
		})
	}
}

func TestOutlierOffAndReconfigure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := outlierConfig("http://a.test", "http://b.test")
		r, _ := startRegistry(t, cfg, newFakeProbes().probe, testLogger(t))
		synctest.Wait()
		answer(r, backendOf(t, r, "http://a.test"), 5, true)
		require.Len(t, r.Healthy(), 1)

		cfg.Outlier.ConsecutiveFailures = 0
		require.NoError(t, r.Reconfigure(context.Background(), cfg))
		assert.Len(t, r.Healthy(), 2, "turning detection off ends ejections")
		answer(r, backendOf(t, r, "http://b.test"), 50, true)
		assert.Len(t, r.Healthy(), 2, "and ejects nobody")
	})
}

func TestOutlierObserverCountsEjections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, err := NewRegistry(outlierConfig("http://a.test", "http://b.test"), newFakeProbes().probe, testLogger(t))
		require.NoError(t, err)
		obs := &observations{}
		r.SetObserver(obs)
		obs.take()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }() // waited for below
		answer(r, r.Healthy()[0], 5, true)
		assert.Equal(t, []string{"ejected a.test 30s", "up a.test false"}, obs.take())
		cancel()
		assert.NoError(t, <-done)
	})
}

func TestObserveAnswerIgnoresForeignBackends(t *testing.T) {
	r, err := NewRegistry(outlierConfig("http://a.test"), newFakeProbes().probe, nil)
	require.NoError(t, err)
	assert.NotPanics(t, func() { r.ObserveAnswer(messages.Backend{ID: 1}, true) })
	assert.Equal(t, 0.0, testing.AllocsPerRun(100, func() { r.ObserveAnswer(r.Healthy()[0], false) }))
}

func TestRegistryWeights(t *testing.T) {
	cfg := regConfig(time.Second, 1, "http://a.test", "http://b.test")
	cfg.Weights = []int{3, 0}
	r, err := NewRegistry(cfg, newFakeProbes().probe, nil)
	require.NoError(t, err)
	hs := r.Healthy()
	require.Len(t, hs, 2)
	assert.Equal(t, 3, hs[0].Weight)
	assert.Equal(t, 1, hs[1].Weight, "0 counts as 1")
	assert.NotNil(t, hs[0].Load)

	cfg.Weights = []int{1}
	_, err = NewRegistry(cfg, newFakeProbes().probe, nil)
	assert.ErrorContains(t, err, "1 weights for 2 backend urls")
}

func TestRegistryReconfigureChangesWeightsKeepingCounters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := regConfig(10*time.Second, 1, "http://a.test", "http://b.test")
		r, _ := startRegistry(t, cfg, newFakeProbes().probe, testLogger(t))
		synctest.Wait()
		before := r.Healthy()
		cfg.Weights = []int{5, 2}
		require.NoError(t, r.Reconfigure(context.Background(), cfg))
		after := r.Healthy()
		require.Len(t, after, 2)
		assert.Equal(t, []int{5, 2}, []int{after[0].Weight, after[1].Weight})
		assert.Equal(t, []int{1, 1}, []int{before[0].Weight, before[1].Weight}, "an old snapshot never changes")
		assert.Same(t, before[0].Load, after[0].Load, "in-flight and failure counts carry over")
		assert.Equal(t, before[0].ID, after[0].ID)
		assert.Equal(t, 5, statusOf(t, r, "http://a.test").Weight)
	})
}
