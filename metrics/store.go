package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// Store operations, as labelled.
const (
	opCreateClient = iota
	opGetClient
	opGetClientByKey
	opListClients
	opKeyRefs
	opUpdateLimits
	opRotateKey
	opDeleteClient
	opSaveStates
	opPing
	numOps
)

var opNames = [numOps]string{
	"create_client", "get_client", "get_client_by_key", "list_clients", "key_refs",
	"update_limits", "rotate_key", "delete_client", "save_states", "ping",
}

// InstrumentStore returns s measured: every operation's duration, and its
// failures in tollgate_store_errors_total. Not-found and conflict answers
// are outcomes, not failures, and neither is a caller giving up
// (context.Canceled). Close is passed through unmeasured.
//
// The result implements persist.Store only: optional interfaces of s, such
// as persist.BulkCreator, are not forwarded. Give consumers of those the
// store itself.
func (m *Metrics) InstrumentStore(s persist.Store) persist.Store {
	is := &instrumentedStore{s: s}
	for op := range numOps {
		is.ops[op] = opSeries{
			errors:   m.storeErrors.WithLabelValues(opNames[op]),
			duration: m.storeDuration.WithLabelValues(opNames[op]),
		}
	}
	return is
}

type opSeries struct {
	errors   prometheus.Counter
	duration prometheus.Observer
}

type instrumentedStore struct {
	s   persist.Store
	ops [numOps]opSeries
}

var _ persist.Store = (*instrumentedStore)(nil)

// done records one operation that started at start and returns its err.
func (is *instrumentedStore) done(op int, start time.Time, err error) error {
	is.ops[op].duration.Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, messages.ErrNotFound) && !errors.Is(err, messages.ErrConflict) &&
		!errors.Is(err, context.Canceled) {
		is.ops[op].errors.Inc()
	}
	return err
}

func (is *instrumentedStore) CreateClient(ctx context.Context, c messages.Client) error {
	start := time.Now()
	return is.done(opCreateClient, start, is.s.CreateClient(ctx, c))
}

func (is *instrumentedStore) GetClient(ctx context.Context, id string) (messages.Client, error) {
	start := time.Now()
	c, err := is.s.GetClient(ctx, id)
	return c, is.done(opGetClient, start, err)
}

func (is *instrumentedStore) GetClientByKey(ctx context.Context, h messages.KeyHash) (messages.Client, error) {
	start := time.Now()
	c, err := is.s.GetClientByKey(ctx, h)
	return c, is.done(opGetClientByKey, start, err)
}

func (is *instrumentedStore) ListClients(ctx context.Context, after string, limit int) ([]messages.Client, error) {
	start := time.Now()
	cs, err := is.s.ListClients(ctx, after, limit)
	return cs, is.done(opListClients, start, err)
}

func (is *instrumentedStore) KeyRefs(ctx context.Context) ([]messages.KeyRef, error) {
	start := time.Now()
	refs, err := is.s.KeyRefs(ctx)
	return refs, is.done(opKeyRefs, start, err)
}

func (is *instrumentedStore) UpdateLimits(ctx context.Context, id string, l messages.Limits) (messages.Client, error) {
	start := time.Now()
	c, err := is.s.UpdateLimits(ctx, id, l)
	return c, is.done(opUpdateLimits, start, err)
}

func (is *instrumentedStore) RotateKey(ctx context.Context, id, apiKey string, h messages.KeyHash, prefix string) (messages.Client, error) {
	start := time.Now()
	c, err := is.s.RotateKey(ctx, id, apiKey, h, prefix)
	return c, is.done(opRotateKey, start, err)
}

func (is *instrumentedStore) DeleteClient(ctx context.Context, id string) (messages.Client, error) {
	start := time.Now()
	c, err := is.s.DeleteClient(ctx, id)
	return c, is.done(opDeleteClient, start, err)
}

func (is *instrumentedStore) SaveStates(ctx context.Context, states []messages.BucketState) error {
	start := time.Now()
	return is.done(opSaveStates, start, is.s.SaveStates(ctx, states))
}

func (is *instrumentedStore) Ping(ctx context.Context) error {
	start := time.Now()
	return is.done(opPing, start, is.s.Ping(ctx))
}

func (is *instrumentedStore) Close() error { return is.s.Close() }
