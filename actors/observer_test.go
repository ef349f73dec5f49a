package actors

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tollgate/tollgate/messages"
)

// observations records what a RegistryObserver and a PersisterObserver
// see, as short lines.
type observations struct {
	mu     sync.Mutex
	events []string
}

var (
	_ RegistryObserver  = (*observations)(nil)
	_ PersisterObserver = (*observations)(nil)
)

func (o *observations) add(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, fmt.Sprintf(format, args...))
}

// take returns the events so far and forgets them.
func (o *observations) take() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := o.events
	o.events = nil
	return out
}

func (o *observations) BackendUp(b messages.Backend, up bool) { o.add("up %s %v", b.URL.Host, up) }
func (o *observations) BackendRemoved(b messages.Backend)     { o.add("removed %s", b.URL.Host) }
func (o *observations) ObserveProbe(b messages.Backend, passed bool, d time.Duration) {
	o.add("probe %s %v %v", b.URL.Host, passed, d)
}
func (o *observations) BackendEjected(b messages.Backend, d time.Duration) {
	o.add("ejected %s %v", b.URL.Host, d)
}
func (o *observations) ObserveSave(clients int, d time.Duration, err error) {
	o.add("save %d %v %v", clients, d, err != nil)
}

func TestRegistryObserverSeesStatesProbesAndRemovals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeProbes()
		fake.set("a.test", fakeAnswer{delay: 20 * time.Millisecond})
		fake.set("b.test", fakeAnswer{status: 500, delay: 30 * time.Millisecond})
		fake.set("c.test", fakeAnswer{delay: 40 * time.Millisecond})
		r, err := NewRegistry(regConfig(10*time.Second, 1, "http://a.test", "http://b.test"), fake.probe, testLogger(t))
		require.NoError(t, err)
		obs := &observations{}
		r.SetObserver(obs)
		assert.Equal(t, []string{"up a.test true", "up b.test true"}, obs.take(), "the state at SetObserver")

		ctx, cancel := context.WithCancel(t.Context())
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return r.Run(gctx) })
		g.Go(func() error { return r.RunWorker(gctx) })
		t.Cleanup(func() { cancel(); assert.NoError(t, g.Wait()) })
		time.Sleep(time.Second) // both probes run, one after the other
		synctest.Wait()
		assert.Equal(t, []string{
			"probe a.test true 20ms",
			"probe b.test false 30ms", "up b.test false",
		}, obs.take())
		assert.Panics(t, func() { r.SetObserver(obs) }, "the loop owns the observer once it runs")

		require.NoError(t, r.Reconfigure(t.Context(), regConfig(10*time.Second, 1, "http://a.test", "http://c.test")))
		time.Sleep(time.Second) // c's first probe
		synctest.Wait()
		assert.Equal(t, []string{
			"up c.test false", "removed b.test",
			"probe c.test true 40ms", "up c.test true",
		}, obs.take())
	})
}

func TestPersisterObserverSeesEveryBatchWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newMemStore()
		l := startLimiter(t, store, LimiterConfig{})
		for _, id := range []string{"a", "b"} {
			_, err := l.CreateClient(t.Context(), newClient(id, "key-"+id+"-0123456789", 0.001, 10, time.Now()))
			require.NoError(t, err)
		}
		obs := &observations{}
		startPersister(t, l, store, PersisterConfig{Interval: time.Second, Observer: obs})
		for _, id := range []string{"a", "b"} {
			_, err := l.Admit(t.Context(), "key-"+id+"-0123456789")
			require.NoError(t, err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, []string{"save 2 0s false"}, obs.take())

		store.down.Store(true)
		_, err := l.Admit(t.Context(), "key-a-0123456789")
		require.NoError(t, err)
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, []string{"save 1 0s true"}, obs.take(), "a failed write is observed too")

		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, []string{"save 1 0s true"}, obs.take(), "and retried")
		store.down.Store(false)
	})
}
