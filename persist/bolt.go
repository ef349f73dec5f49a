package persist

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tollgate/tollgate/messages"
)

// Bucket names. "keys" maps a key hash to its client id: it makes key
// hashes unique and GetClientByKey a single lookup. Every write keeps the
// two buckets consistent within one transaction.
var (
	bucketClients = []byte("clients")
	bucketKeys    = []byte("keys")
)

// boltOpenTimeout bounds the wait for the file lock, so a second process
// on the same file gets an error instead of hanging.
const boltOpenTimeout = time.Second

// Bolt is the Store in one bbolt file, for single-node use. It has the
// semantics of Postgres, checked by the same contract suite: the same
// values are refused, times keep microsecond precision and come back in
// UTC, ids are ordered bytewise. It is safe for concurrent use: bbolt runs
// one writer at a time beside any number of readers. ctx is not consulted:
// every operation is local and short. Clients live in "clients" under
// their id (see bolt_record.go for the encoding).
type Bolt struct {
	db  *bolt.DB
	log *slog.Logger
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the file at path with mode 0600. A file held
// by another process is an error after one second.
func OpenBolt(path string, logger *slog.Logger) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      boltOpenTimeout,
		FreelistType: bolt.FreelistMapType,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("persist: open %s: file is locked by another process (waited %s)", path, boltOpenTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("persist: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketClients, bucketKeys} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("persist: init %s: %w", path, err), db.Close())
	}
	return &Bolt{db: db, log: logger.With("store", "bolt")}, nil
}

// wrap prefixes err with the operation. Errors of ours pass through;
// anything else comes from bbolt or the file (closed store, I/O) and is
// ErrUnavailable: the transaction was rolled back, nothing changed.
func (b *Bolt) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, messages.ErrNotFound), errors.Is(err, messages.ErrConflict),
		errors.Is(err, ErrInvalid), errors.Is(err, errCorrupt):
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		err = fmt.Errorf("%w: store closed", messages.ErrUnavailable)
	default:
		err = fmt.Errorf("%w: %w", messages.ErrUnavailable, err)
	}
	return fmt.Errorf("persist: %s: %w", op, err)
}

// view and update run fn in a read or write transaction on both buckets.
func (b *Bolt) view(fn func(clients, keys *bolt.Bucket) error) error {
	return b.db.View(func(tx *bolt.Tx) error {
		return fn(tx.Bucket(bucketClients), tx.Bucket(bucketKeys))
	})
}

func (b *Bolt) update(fn func(clients, keys *bolt.Bucket) error) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		return fn(tx.Bucket(bucketClients), tx.Bucket(bucketKeys))
	})
}

// Ping reports ErrUnavailable once the store is closed, nil before.
func (b *Bolt) Ping(context.Context) error {
	return b.wrap("ping", b.db.View(func(*bolt.Tx) error { return nil }))
}

// Close waits for running transactions and closes the file. Afterwards
// every method fails with ErrUnavailable. It is safe to call more than
// once.
func (b *Bolt) Close() error {
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("persist: close %s: %w", b.db.Path(), err)
	}
	return nil
}
