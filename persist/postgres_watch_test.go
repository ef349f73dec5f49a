package persist_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
	"github.com/tollgate/tollgate/persist/pgtest"
)

// watch runs s.Watch until the test ends and hands over what it reports.
func watch(t *testing.T, s *persist.Postgres) <-chan messages.Change {
	t.Helper()
	changes := make(chan messages.Change, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, time.Hour, func(ctx context.Context, ch messages.Change) error {
			select {
			case changes <- ch:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return changes
}

func next(t *testing.T, changes <-chan messages.Change) messages.Change {
	t.Helper()
	select {
	case ch := <-changes:
		return ch
	case <-time.After(10 * time.Second):
		t.Fatal("no change reported within 10s")
		return messages.Change{}
	}
}

// Two stores on one database stand for two instances: what one writes,
// the other hears.
func TestPostgresWatchReportsChangesFromAnotherInstance(t *testing.T) {
	dsn := pgtest.New(t)
	ctx := context.Background()
	a, err := persist.OpenPostgres(ctx, dsn, discard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	b, err := persist.OpenPostgres(ctx, dsn, discard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })

	changes := watch(t, b)
	assert.Equal(t, messages.Change{Resync: true}, next(t, changes), "a resync once listening")

	c := newClient("watched")
	require.NoError(t, a.CreateClient(ctx, c))
	assert.Equal(t, messages.Change{ClientID: c.ID, KeyHash: c.KeyHash, RatePerSec: c.RatePerSec, Capacity: c.Capacity}, next(t, changes))

	capacity := int64(7)
	_, err = a.UpdateLimits(ctx, c.ID, messages.Limits{Capacity: &capacity})
	require.NoError(t, err)
	assert.Equal(t, int64(7), next(t, changes).Capacity)

	require.NoError(t, a.SaveStates(ctx, []messages.BucketState{{ClientID: c.ID, Tokens: 1, LastRefill: time.Now()}}))

	newHash := messages.HashKey("rotated-key-0123456789")
	_, err = a.RotateKey(ctx, c.ID, "rotated-key-0123456789", newHash, "rotate")
	require.NoError(t, err)
	ch := next(t, changes)
	assert.Equal(t, newHash, ch.KeyHash, "bucket saves do not notify: the rotation comes next")
	assert.Equal(t, c.KeyHash, ch.OldKeyHash)

	_, err = a.DeleteClient(ctx, c.ID)
	require.NoError(t, err)
	assert.Equal(t, messages.Change{Deleted: true, ClientID: c.ID, KeyHash: newHash}, next(t, changes))
}

func TestPostgresWatchReconnectsAndResyncs(t *testing.T) {
	dsn := pgtest.New(t)
	ctx := context.Background()
	s, err := persist.OpenPostgres(ctx, dsn, discard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	changes := watch(t, s)
	require.True(t, next(t, changes).Resync)

	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var killed int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = 'tollgate-listener' AND datname = current_database()`).Scan(&killed))
	require.Equal(t, 1, killed)

	assert.Equal(t, messages.Change{Resync: true, DropCache: true}, next(t, changes),
		"notifications may have been missed: resync and drop cached clients")
	c := newClient("after")
	require.NoError(t, s.CreateClient(ctx, c))
	assert.Equal(t, c.ID, next(t, changes).ClientID, "listening again")
}
