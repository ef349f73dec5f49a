package httpapi

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/tollgate/tollgate/messages"
)

var (
	_ Clients  = (*memClients)(nil)
	_ Clients  = clientsFuncs{}
	_ Backends = backendsFuncs{}
)

// memClients is an in-memory Clients that behaves like actors.Limiter
// over a store: unique ids and key hashes, ordered paging, token clamping,
// and, with hashed set, keys shown in clear only by create and rotate.
type memClients struct {
	hashed bool

	mu      sync.Mutex // guards the fields below
	clients map[string]messages.Client
	keys    map[messages.KeyHash]string // key hash → client id
	down    bool                        // store unreachable: every call is ErrUnavailable
}

func newMemClients(hashed bool) *memClients {
	return &memClients{hashed: hashed, clients: map[string]messages.Client{}, keys: map[messages.KeyHash]string{}}
}

func (m *memClients) setDown(down bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.down = down
}

// shown is c as a read answer shows it.
func (m *memClients) shown(c messages.Client) messages.Client {
	if m.hashed {
		c.APIKey = ""
	}
	return c
}

func (m *memClients) CreateClient(_ context.Context, c messages.Client) (messages.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return messages.Client{}, fmt.Errorf("mem: create: %w", messages.ErrUnavailable)
	}
	if _, ok := m.clients[c.ID]; ok {
		return messages.Client{}, fmt.Errorf("mem: client_id taken: %w", messages.ErrConflict)
	}
	if _, ok := m.keys[c.KeyHash]; ok {
		return messages.Client{}, fmt.Errorf("mem: api_key taken: %w", messages.ErrConflict)
	}
	if c.KeyHash != messages.HashKey(c.APIKey) {
		return messages.Client{}, fmt.Errorf("mem: key hash does not match the key")
	}
	m.clients[c.ID] = m.shown(c)
	m.keys[c.KeyHash] = c.ID
	return c, nil
}

func (m *memClients) GetClient(_ context.Context, id string) (messages.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return messages.Client{}, fmt.Errorf("mem: get: %w", messages.ErrUnavailable)
	}
	c, ok := m.clients[id]
	if !ok {
		return messages.Client{}, fmt.Errorf("mem: get %q: %w", id, messages.ErrNotFound)
	}
	return c, nil
}

func (m *memClients) ListClients(_ context.Context, after string, limit int) ([]messages.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return nil, fmt.Errorf("mem: list: %w", messages.ErrUnavailable)
	}
	ids := make([]string, 0, len(m.clients))
	for id := range m.clients {
		if id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	ids = ids[:min(limit, len(ids))]
	out := make([]messages.Client, 0, len(ids))
	for _, id := range ids {
		out = append(out, m.clients[id])
	}
	return out, nil
}

func (m *memClients) UpdateLimits(_ context.Context, id string, l messages.Limits) (messages.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return messages.Client{}, fmt.Errorf("mem: update: %w", messages.ErrUnavailable)
	}
	c, ok := m.clients[id]
	if !ok {
		return messages.Client{}, fmt.Errorf("mem: update %q: %w", id, messages.ErrNotFound)
	}
	l.ApplyTo(&c)
	m.clients[id] = c
	return c, nil
}

func (m *memClients) DeleteClient(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return fmt.Errorf("mem: delete: %w", messages.ErrUnavailable)
	}
	c, ok := m.clients[id]
	if !ok {
		return fmt.Errorf("mem: delete %q: %w", id, messages.ErrNotFound)
	}
	delete(m.clients, id)
	delete(m.keys, c.KeyHash)
	return nil
}

func (m *memClients) RotateKey(_ context.Context, id, newKey string) (messages.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return messages.Client{}, fmt.Errorf("mem: rotate: %w", messages.ErrUnavailable)
	}
	c, ok := m.clients[id]
	if !ok {
		return messages.Client{}, fmt.Errorf("mem: rotate %q: %w", id, messages.ErrNotFound)
	}
	h := messages.HashKey(newKey)
	if _, taken := m.keys[h]; taken {
		return messages.Client{}, fmt.Errorf("mem: api_key taken: %w", messages.ErrConflict)
	}
	delete(m.keys, c.KeyHash)
	c.APIKey, c.KeyHash, c.KeyPrefix = newKey, h, newKey[:min(len(newKey), messages.KeyPrefixLen)]
	m.keys[h] = id
	m.clients[id] = m.shown(c)
	return c, nil
}

func (m *memClients) Ready(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return fmt.Errorf("mem: ping: %w", messages.ErrUnavailable)
	}
	return nil
}

// keyOwner returns the id of the client holding key, for tests that check
// an old key stopped working.
func (m *memClients) keyOwner(key string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.keys[messages.HashKey(key)]
	return id, ok
}

// clientsFuncs is a Clients made of function fields, for error injection.
// A nil field panics, which the tests of panic recovery rely on.
type clientsFuncs struct {
	create func(ctx context.Context, c messages.Client) (messages.Client, error)
	get    func(ctx context.Context, id string) (messages.Client, error)
	list   func(ctx context.Context, after string, limit int) ([]messages.Client, error)
	update func(ctx context.Context, id string, l messages.Limits) (messages.Client, error)
	delete func(ctx context.Context, id string) error
	rotate func(ctx context.Context, id, newKey string) (messages.Client, error)
	ready  func(ctx context.Context) error
}

func (f clientsFuncs) CreateClient(ctx context.Context, c messages.Client) (messages.Client, error) {
	return f.create(ctx, c)
}
func (f clientsFuncs) GetClient(ctx context.Context, id string) (messages.Client, error) {
	return f.get(ctx, id)
}
func (f clientsFuncs) ListClients(ctx context.Context, after string, limit int) ([]messages.Client, error) {
	return f.list(ctx, after, limit)
}
func (f clientsFuncs) UpdateLimits(ctx context.Context, id string, l messages.Limits) (messages.Client, error) {
	return f.update(ctx, id, l)
}
func (f clientsFuncs) DeleteClient(ctx context.Context, id string) error { return f.delete(ctx, id) }
func (f clientsFuncs) RotateKey(ctx context.Context, id, newKey string) (messages.Client, error) {
	return f.rotate(ctx, id, newKey)
}
func (f clientsFuncs) Ready(ctx context.Context) error { return f.ready(ctx) }

// failingClients returns a clientsFuncs whose every method fails with err.
func failingClients(err error) clientsFuncs {
	return clientsFuncs{
		create: func(context.Context, messages.Client) (messages.Client, error) { return messages.Client{}, err },
		get:    func(context.Context, string) (messages.Client, error) { return messages.Client{}, err },
		list:   func(context.Context, string, int) ([]messages.Client, error) { return nil, err },
		update: func(context.Context, string, messages.Limits) (messages.Client, error) {
			return messages.Client{}, err
		},
		delete: func(context.Context, string) error { return err },
		rotate: func(context.Context, string, string) (messages.Client, error) { return messages.Client{}, err },
		ready:  func(context.Context) error { return err },
	}
}

// backendsFuncs is a Backends made of function fields.
type backendsFuncs struct {
	statuses func(ctx context.Context) ([]messages.BackendStatus, error)
	healthy  func() []messages.Backend
}

func (f backendsFuncs) Statuses(ctx context.Context) ([]messages.BackendStatus, error) {
	return f.statuses(ctx)
}
func (f backendsFuncs) Healthy() []messages.Backend { return f.healthy() }

// staticBackends returns a Backends that reports statuses and counts the
// healthy ones among them.
func staticBackends(statuses ...messages.BackendStatus) backendsFuncs {
	return backendsFuncs{
		statuses: func(context.Context) ([]messages.BackendStatus, error) { return statuses, nil },
		healthy: func() []messages.Backend {
			var out []messages.Backend
			for i, s := range statuses {
				if s.Healthy {
					out = append(out, messages.Backend{ID: i})
				}
			}
			return out
		},
	}
}
