package actors

import (
	"context"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// Collector is where the persister gets changed bucket states, and what it
// tells once they are saved: the Limiter.
type Collector interface {
	Collect(ctx context.Context) (states []messages.BucketState, deleted []string, err error)
	Saved(ctx context.Context, states []messages.BucketState) error
}

// PersisterConfig sets up a Persister.
type PersisterConfig struct {
	Interval time.Duration // save_state_interval
	// SaveTimeout bounds one batch write (default Interval, at most 10s).
	SaveTimeout time.Duration
	// FlushTimeout bounds the final flush at shutdown (shutdown_timeout).
	FlushTimeout time.Duration
	// Observer receives each batch write's size and duration; nil
	// measures nothing.
	Observer PersisterObserver
}

// Persister saves changed bucket states in batches. Each tick it collects
// from the shards, merges into what it still holds (the latest value per
// client wins) and writes one batch. A failed write keeps everything for
// the next tick, so an outage loses nothing and blocks nobody: admission
// never waits for the persister. It flushes once more when stopped.
//
// Its loop does the store write itself: writing is its only job, and
// Flush callers are meant to wait for it.
type Persister struct {
	src   Collector
	store persist.Store
	cfg   PersisterConfig
	log   *slog.Logger
	flush chan chan error
	done  chan struct{}

	// Owned by the Run goroutine.
	pending map[string]messages.BucketState
}

// NewPersister returns a Persister ready to Run.
func NewPersister(cfg PersisterConfig, src Collector, store persist.Store, log *slog.Logger) *Persister {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.SaveTimeout <= 0 {
		cfg.SaveTimeout = min(cfg.Interval, 10*time.Second)
	}
	if cfg.FlushTimeout <= 0 {
		cfg.FlushTimeout = 10 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = nopPersisterObserver{}
	}
	return &Persister{
		src:     src,
		store:   store,
		cfg:     cfg,
		log:     log.With("actor", "persister"),
		flush:   make(chan chan error),
		done:    make(chan struct{}),
		pending: make(map[string]messages.BucketState),
	}
}

// Run saves every Interval until ctx is cancelled, then flushes once more
// within FlushTimeout and returns nil. The shards must still be running
// during that final flush: stop them after Run returns.
func (p *Persister) Run(ctx context.Context) error {
	defer close(p.done)
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.finalFlush(context.WithoutCancel(ctx))
			return nil
		case <-t.C:
			if err := p.save(ctx); err != nil {
				p.log.Warn("save failed; will retry", "pending", len(p.pending), slog.Any("err", err))
			}
		case reply := <-p.flush:
			reply <- p.save(ctx)
		}
	}
}

func (p *Persister) finalFlush(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.FlushTimeout)
	defer cancel()
	if err := p.save(ctx); err != nil {
		p.log.Error("final flush failed; states not saved", "pending", len(p.pending), slog.Any("err", err))
		return
	}
	p.log.Info("final flush done")
}

// Flush collects and saves now, and reports whether everything pending
// reached the store.
func (p *Persister) Flush(ctx context.Context) error {
	reply := make(chan error, 1)
	saveErr, err := call(ctx, p.done, p.flush, reply, reply)
	if err != nil {
		return err
	}
	return saveErr
}

// save merges what the shards changed into pending and writes it all. A
// deleted client's pending state is dropped before states are merged, so
// a client deleted and created again keeps its new state.
//
// Collect and Saved do not follow ctx: once a shard has handed its states
// over (and cleared them), they must reach pending, or a shutdown during
// the collect would lose them; the shards answer at once, or ErrStopped.
func (p *Persister) save(ctx context.Context) error {
	states, deleted, cerr := p.src.Collect(context.WithoutCancel(ctx))
	for _, id := range deleted {
		delete(p.pending, id)
	}
	for _, st := range states {
		p.pending[st.ClientID] = st
	}
	if len(p.pending) > 0 {
		batch := make([]messages.BucketState, 0, len(p.pending))
		for _, st := range p.pending {
			batch = append(batch, st)
		}
		wctx, cancel := context.WithTimeout(ctx, p.cfg.SaveTimeout)
		start := time.Now()
		err := p.store.SaveStates(wctx, batch)
		p.cfg.Observer.ObserveSave(len(batch), time.Since(start), err)
		cancel()
		if err != nil {
			return err
		}
		p.log.Debug("states saved", "count", len(batch))
		clear(p.pending)
		if err := p.src.Saved(context.WithoutCancel(ctx), batch); err != nil {
			return err
		}
	}
	return cerr
}
