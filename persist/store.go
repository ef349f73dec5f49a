// Package persist owns Tollgate's durable state: client definitions and
// their saved bucket states. Store has two implementations with the same
// semantics, checked by one contract suite: PostgreSQL (pgx, migrations
// from the migrations package) and an embedded bbolt file for single-node
// use. Only this package imports a database driver.
//
// Errors wrap the sentinels of package messages: ErrNotFound, ErrConflict
// (duplicate client_id or key hash) and ErrUnavailable (the store could not
// be reached; nothing changed).
package persist

import (
	"context"

	"github.com/tollgate/tollgate/messages"
)

// MaxPage is the largest page ListClients returns.
const MaxPage = 1000

// Store is the durable home of clients. Implementations are safe for
// concurrent use.
type Store interface {
	// CreateClient inserts c with version 1. A taken c.ID or c.KeyHash is
	// ErrConflict. c.APIKey may be empty (hashed-at-rest mode); KeyHash,
	// KeyPrefix and Generation are always set by the caller.
	CreateClient(ctx context.Context, c messages.Client) error
	// GetClient returns the client with that id, or ErrNotFound.
	GetClient(ctx context.Context, id string) (messages.Client, error)
	// GetClientByKey returns the client whose key hashes to h, or ErrNotFound.
	GetClientByKey(ctx context.Context, h messages.KeyHash) (messages.Client, error)
	// ListClients returns up to limit clients with id > after, ordered by id.
	ListClients(ctx context.Context, after string, limit int) ([]messages.Client, error)
	// KeyRefs returns every client's id and key hash: the key index's source.
	KeyRefs(ctx context.Context) ([]messages.KeyRef, error)
	// UpdateLimits refills the stored bucket to l.At at the old rate,
	// changes rate and/or capacity, clamps the stored tokens to the new
	// capacity, bumps the version and returns the client as stored.
	UpdateLimits(ctx context.Context, id string, l messages.Limits) (messages.Client, error)
	// RotateKey replaces the client's key (apiKey may be empty when hashed
	// at rest), bumps the version, and returns the client as it was before
	// (its version is one less than the new one), so callers can find the
	// old key's cache entry.
	RotateKey(ctx context.Context, id, apiKey string, h messages.KeyHash, prefix string) (old messages.Client, err error)
	// DeleteClient removes the client and returns it as it was.
	DeleteClient(ctx context.Context, id string) (messages.Client, error)
	// SaveStates writes many bucket states at once. A state is skipped
	// when no client has its id and generation (a deleted client is never
	// re-created, and one created again with the id is not touched), or
	// when the stored last_refill is later than the state's.
	SaveStates(ctx context.Context, states []messages.BucketState) error
	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	// Close releases the store; it is not usable afterwards.
	Close() error
}
