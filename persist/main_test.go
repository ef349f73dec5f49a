package persist_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate/tollgate/persist"
	"github.com/tollgate/tollgate/persist/pgtest"
)

// The pgx pool runs background goroutines; Close must stop them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// boltStorage returns an opener of one new bolt file.
func boltStorage(t testing.TB) func(t testing.TB) persist.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tollgate.db")
	return func(t testing.TB) persist.Store {
		t.Helper()
		s, err := persist.OpenBolt(path, discard())
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

// postgresStorage returns an opener of one new PostgreSQL database.
func postgresStorage(t testing.TB) func(t testing.TB) persist.Store {
	t.Helper()
	dsn := pgtest.New(t)
	return func(t testing.TB) persist.Store {
		t.Helper()
		s, err := persist.OpenPostgres(context.Background(), dsn, discard())
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

// fresh turns a storage maker into the contract's "new empty store".
func fresh(storage func(testing.TB) func(testing.TB) persist.Store) func(*testing.T) persist.Store {
	return func(t *testing.T) persist.Store { return storage(t)(t) }
}

func reopenable(storage func(testing.TB) func(testing.TB) persist.Store) func(*testing.T) func() persist.Store {
	return func(t *testing.T) func() persist.Store {
		open := storage(t)
		return func() persist.Store { return open(t) }
	}
}

func TestBoltContract(t *testing.T)     { runContract(t, fresh(boltStorage)) }
func TestPostgresContract(t *testing.T) { runContract(t, fresh(postgresStorage)) }
func TestBoltReopen(t *testing.T)       { runReopen(t, reopenable(boltStorage)) }
func TestPostgresReopen(t *testing.T)   { runReopen(t, reopenable(postgresStorage)) }
