package actors

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// modelLeases is a persist.LeaseStore for actor tests: each client's row is
// a simRow, the model of tollgate_renew_leases, created from the memStore
// client on first use. It counts statements, can be made unavailable, and
// can hold every call until its context ends (a hung store).
type modelLeases struct {
	clients *memStore
	epoch   time.Time

	mu      sync.Mutex
	rows    map[string]*simRow
	holders map[string]int
	log     []messages.LeaseRenewal // every renewal applied

	calls atomic.Int64
	down  atomic.Bool
	hang  atomic.Bool
	delay atomic.Int64 // every call takes this long first: a slow store
}

var _ persist.LeaseStore = (*modelLeases)(nil)

func newModelLeases(clients *memStore) *modelLeases {
	return &modelLeases{clients: clients, epoch: time.Now(), rows: map[string]*simRow{}, holders: map[string]int{}}
}

// now is the model's clock: the store's, in nanoseconds.
func (m *modelLeases) now() int64 { return int64(time.Since(m.epoch)) }

func (m *modelLeases) RenewLeases(ctx context.Context, holder string, ttl time.Duration, rs []messages.LeaseRenewal) ([]messages.LeaseGrant, error) {
	m.calls.Add(1)
	if d := time.Duration(m.delay.Load()); d > 0 {
		time.Sleep(d) // a slow round trip, on the test's (virtual) clock
	}
	if m.hang.Load() {
		<-ctx.Done()
		return nil, fmt.Errorf("model: %w: %w", messages.ErrUnavailable, ctx.Err())
	}
	if m.down.Load() {
		return nil, fmt.Errorf("model: %w", messages.ErrUnavailable)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.holders[holder]
	if !ok {
		h = len(m.holders)
		m.holders[holder] = h
	}
	var out []messages.LeaseGrant
	for _, r := range rs {
		row := m.row(r.ClientID, ttl)
		if row == nil {
			continue
		}
		g := row.renew(h, r, m.now())
		g.ClientID, g.RatePerSec, g.Capacity = r.ClientID, row.rate, int64(row.capacity)
		g.Version = m.clients.get(r.ClientID).Version
		out = append(out, g)
		m.log = append(m.log, r)
	}
	return out, nil
}

// row returns the model row of id, made from the stored client; nil if
// there is no such client.
func (m *modelLeases) row(id string, ttl time.Duration) *simRow {
	c := m.clients.get(id)
	if r, ok := m.rows[id]; ok {
		if c.ID != "" { // the limits as stored now
			r.rate, r.capacity = c.RatePerSec, float64(c.Capacity)
		}
		return r
	}
	if c.ID == "" {
		return nil
	}
	r := newSimRow(float64(c.Capacity), c.RatePerSec, int64(ttl))
	r.tokens, r.last = c.Tokens, m.now()
	m.rows[id] = r
	return r
}

func (m *modelLeases) SharedTokens(_ context.Context, ids []string) (map[string]float64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]float64{}
	for _, id := range ids {
		if r, ok := m.rows[id]; ok {
			out[id] = r.total(m.now())
		}
	}
	return out, nil
}

// total is the row plus its live leases as the store sees them now.
func (m *modelLeases) total(id string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rows[id].total(m.now())
}

func (m *modelLeases) renewals() []messages.LeaseRenewal {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]messages.LeaseRenewal(nil), m.log...)
}

// leasedSetup is a Limiter with shared buckets and its Leaser, running.
type leasedSetup struct {
	l      *Limiter
	x      *Leaser
	store  *memStore
	leases *modelLeases
	stop   func() // cancels both and waits for them
}

func startLeased(t *testing.T, policy string) *leasedSetup {
	t.Helper()
	store := newMemStore()
	return startLeasedOn(t, policy, store, newModelLeases(store))
}

// startLeasedOn is startLeased on a given store: several of them on one
// store are several instances.
func startLeasedOn(t *testing.T, policy string, store *memStore, leases *modelLeases) *leasedSetup {
	t.Helper()
	l, err := NewLimiter(context.Background(), LimiterConfig{Shards: 2, Shared: &SharedBuckets{
		Store: leases, LeaseTTL: 5 * time.Second, ReportInterval: time.Second, StoreDownPolicy: policy,
	}}, store, discard)
	require.NoError(t, err)
	x := NewLeaser(l, discard)
	require.NotNil(t, x)
	ctx, cancel := context.WithCancel(context.Background())
	lctx, lcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, l.Run(lctx)) })
	wg.Go(func() {
		defer lcancel() // the shards outlive the Leaser's handback
		require.NoError(t, x.Run(ctx))
	})
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return &leasedSetup{l: l, x: x, store: store, leases: leases, stop: stop}
}

func (s *leasedSetup) client(t *testing.T, id string, rate float64, capacity int64) string {
	t.Helper()
	key := "key-" + id + "-0123456789abcdef"
	_, err := s.l.CreateClient(context.Background(), newClient(id, key, rate, capacity, time.Now()))
	require.NoError(t, err)
	return key
}

// admitN sends n requests and counts the admitted ones.
func (s *leasedSetup) admitN(t *testing.T, key string, n int) int {
	t.Helper()
	ok := 0
	for range n {
		d, err := s.l.Admit(context.Background(), key)
		require.NoError(t, err)
		if d.Allowed {
			ok++
		}
	}
	return ok
}
