package actors

import (
	"time"

	"github.com/tollgate/tollgate/messages"
)

// RegistryObserver receives the backend registry's measurements, for
// metrics. Its methods run on the registry's loop goroutine, one at a
// time: they must be quick and must not call the Registry. Package
// metrics implements it.
type RegistryObserver interface {
	// BackendUp reports b's state: whether it is in the healthy snapshot.
	// It is called for every backend when the observer is set, on every
	// change, and for a backend added by Reconfigure (down until probed).
	BackendUp(b messages.Backend, up bool)
	// BackendRemoved reports that Reconfigure removed b.
	BackendRemoved(b messages.Backend)
	// ObserveProbe reports one active probe of b: whether it passed and
	// how long it took.
	ObserveProbe(b messages.Backend, passed bool, d time.Duration)
	// BackendEjected reports that outlier detection ejected b for d.
	BackendEjected(b messages.Backend, d time.Duration)
}

type nopRegistryObserver struct{}

func (nopRegistryObserver) BackendUp(messages.Backend, bool)                   {}
func (nopRegistryObserver) BackendRemoved(messages.Backend)                    {}
func (nopRegistryObserver) ObserveProbe(messages.Backend, bool, time.Duration) {}
func (nopRegistryObserver) BackendEjected(messages.Backend, time.Duration)     {}

// SetObserver makes o receive the registry's measurements and reports
// every backend's current state to it at once. It must be called before
// Run, like the registry's construction, and panics otherwise: the loop
// owns the observer once it runs. A nil o measures nothing.
func (r *Registry) SetObserver(o RegistryObserver) {
	if r.started.Load() {
		panic("actors: registry: SetObserver after Run")
	}
	if o == nil {
		o = nopRegistryObserver{}
	}
	r.obs = o
	for _, id := range r.order {
		st := r.backends[id]
		o.BackendUp(st.backend, st.serving())
	}
}

// PersisterObserver receives the persister's measurements, for metrics.
// Its method runs on the persister's goroutine: it must be quick. Package
// metrics implements it.
type PersisterObserver interface {
	// ObserveSave reports one batch write of clients bucket states that
	// took d and failed with err (nil on success).
	ObserveSave(clients int, d time.Duration, err error)
}

type nopPersisterObserver struct{}

func (nopPersisterObserver) ObserveSave(int, time.Duration, error) {}
