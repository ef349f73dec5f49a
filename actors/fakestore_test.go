package actors

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// memStore is an in-memory persist.Store for actor tests: counts key
// loads, can be made unavailable, and can hold loads at a gate.
type memStore struct {
	mu      sync.Mutex
	clients map[string]messages.Client

	down      atomic.Bool
	keyLoads  atomic.Int64
	saves     atomic.Int64
	loadGate  chan struct{} // when non-nil, GetClientByKey waits for it
	saveCalls func([]messages.BucketState)
	// afterKeyRefs runs once KeyRefs has taken its snapshot, before it
	// returns: changes it makes are missing from that snapshot.
	afterKeyRefs func()
	// afterWrite, when set, runs after each successful admin write
	// ("create", "limits", "rotate", "delete") and before it returns.
	afterWrite func(op, id string)
}

func (m *memStore) wrote(op, id string) {
	if m.afterWrite != nil {
		m.afterWrite(op, id)
	}
}

var _ persist.Store = (*memStore)(nil)

func newMemStore() *memStore { return &memStore{clients: make(map[string]messages.Client)} }

func (m *memStore) check() error {
	if m.down.Load() {
		return fmt.Errorf("memstore: %w", messages.ErrUnavailable)
	}
	return nil
}

func (m *memStore) CreateClient(_ context.Context, c messages.Client) error {
	if err := m.check(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range m.clients {
		if o.ID == c.ID || o.KeyHash == c.KeyHash {
			return messages.ErrConflict
		}
	}
	c.Version = 1
	m.clients[c.ID] = c
	m.mu.Unlock()
	m.wrote("create", c.ID)
	m.mu.Lock()
	return nil
}

func (m *memStore) GetClient(_ context.Context, id string) (messages.Client, error) {
	if err := m.check(); err != nil {
		return messages.Client{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.clients[id]
	if !ok {
		return c, messages.ErrNotFound
	}
	return c, nil
}

func (m *memStore) GetClientByKey(ctx context.Context, h messages.KeyHash) (messages.Client, error) {
	m.keyLoads.Add(1)
	if m.loadGate != nil {
		select {
		case <-m.loadGate:
		case <-ctx.Done():
			return messages.Client{}, ctx.Err()
		}
	}
	if err := m.check(); err != nil {
		return messages.Client{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.clients {
		if c.KeyHash == h {
			return c, nil
		}
	}
	return messages.Client{}, messages.ErrNotFound
}

func (m *memStore) ListClients(_ context.Context, after string, limit int) ([]messages.Client, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []messages.Client
	for _, c := range m.clients {
		if c.ID > after {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b messages.Client) int { return strings.Compare(a.ID, b.ID) })
	return out[:min(limit, len(out))], nil
}

func (m *memStore) KeyRefs(context.Context) ([]messages.KeyRef, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var refs []messages.KeyRef
	for _, c := range m.clients {
		refs = append(refs, messages.KeyRef{ClientID: c.ID, KeyHash: c.KeyHash,
			RatePerSec: c.RatePerSec, Capacity: c.Capacity, Generation: c.Generation, Version: c.Version})
	}
	if m.afterKeyRefs != nil {
		m.mu.Unlock()
		m.afterKeyRefs()
		m.mu.Lock()
	}
	return refs, nil
}

func (m *memStore) UpdateLimits(_ context.Context, id string, l messages.Limits) (messages.Client, error) {
	if err := m.check(); err != nil {
		return messages.Client{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.clients[id]
	if !ok {
		return c, messages.ErrNotFound
	}
	l.ApplyTo(&c)
	c.Version++
	m.clients[id] = c
	m.mu.Unlock()
	m.wrote("limits", id)
	m.mu.Lock()
	return c, nil
}

func (m *memStore) RotateKey(_ context.Context, id, key string, h messages.KeyHash, prefix string) (messages.Client, error) {
	if err := m.check(); err != nil {
		return messages.Client{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.clients[id]
	if !ok {
		return old, messages.ErrNotFound
	}
	c := old
	c.APIKey, c.KeyHash, c.KeyPrefix = key, h, prefix
	c.Version++
	m.clients[id] = c
	m.mu.Unlock()
	m.wrote("rotate", id)
	m.mu.Lock()
	return old, nil
}

func (m *memStore) DeleteClient(_ context.Context, id string) (messages.Client, error) {
	if err := m.check(); err != nil {
		return messages.Client{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.clients[id]
	if !ok {
		return c, messages.ErrNotFound
	}
	delete(m.clients, id)
	m.mu.Unlock()
	m.wrote("delete", id)
	m.mu.Lock()
	return c, nil
}

func (m *memStore) SaveStates(_ context.Context, states []messages.BucketState) error {
	if err := m.check(); err != nil {
		return err
	}
	m.saves.Add(1)
	if m.saveCalls != nil {
		m.saveCalls(states)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, st := range states {
		if c, ok := m.clients[st.ClientID]; ok && c.Generation == st.Generation && !c.LastRefill.After(st.LastRefill) {
			c.Tokens, c.LastRefill = min(st.Tokens, float64(c.Capacity)), st.LastRefill
			m.clients[st.ClientID] = c
		}
	}
	return nil
}

func (m *memStore) Ping(context.Context) error { return m.check() }
func (m *memStore) Close() error               { return nil }

func (m *memStore) get(id string) messages.Client {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.clients[id]
}
