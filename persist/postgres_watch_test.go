package persist_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
	"github.com/tollgate/tollgate/persist/pgtest"
)

// watch runs s.Watch until the test ends and hands over what it reports.
func watch(t *testing.T, s *persist.Postgres) <-chan messages.Change {
	t.Helper()
	return watchEvery(t, s, time.Hour)
}

func watchEvery(t *testing.T, s *persist.Postgres, resync time.Duration) <-chan messages.Change {
	t.Helper()
	changes := make(chan messages.Change, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, resync, func(ctx context.Context, ch messages.Change) error {
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
	assert.Equal(t, messages.Change{ClientID: c.ID, KeyHash: c.KeyHash, RatePerSec: c.RatePerSec, Capacity: c.Capacity,
		Version: 1}, next(t, changes))

	capacity := int64(7)
	_, err = a.UpdateLimits(ctx, c.ID, messages.Limits{Capacity: &capacity})
	require.NoError(t, err)
	ch := next(t, changes)
	assert.Equal(t, int64(7), ch.Capacity)
	assert.Equal(t, int64(2), ch.Version)

	require.NoError(t, a.SaveStates(ctx, []messages.BucketState{{ClientID: c.ID, Tokens: 1, LastRefill: time.Now()}}))

	newHash := messages.HashKey("rotated-key-0123456789")
	_, err = a.RotateKey(ctx, c.ID, "rotated-key-0123456789", newHash, "rotate")
	require.NoError(t, err)
	ch = next(t, changes)
	assert.Equal(t, newHash, ch.KeyHash, "bucket saves do not notify: the rotation comes next")
	assert.Equal(t, c.KeyHash, ch.OldKeyHash)

	_, err = a.DeleteClient(ctx, c.ID)
	require.NoError(t, err)
	assert.Equal(t, messages.Change{Deleted: true, ClientID: c.ID, KeyHash: newHash, Version: 3}, next(t, changes))
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

// A listening connection that dies silently (the network drops its
// packets, nothing closes it) is noticed within seconds, not when TCP
// keepalive gives up (issue 11 item 6).
func TestPostgresWatchNoticesASilentlyDeadListener(t *testing.T) {
	dsn := pgtest.New(t)
	ctx := context.Background()
	px := startProxy(t, serverAddr(t, dsn), 0)
	proxied, err := pgtest.WithAddr(dsn, px.port)
	require.NoError(t, err)
	s, err := persist.OpenPostgres(ctx, proxied, discard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	other, err := persist.OpenPostgres(ctx, dsn, discard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Close() })
	changes := watch(t, s)
	require.True(t, next(t, changes).Resync)

	px.blackhole()
	assert.Equal(t, messages.Change{Resync: true, DropCache: true}, next(t, changes),
		"the dead listener was replaced, and what it may have missed resynced")
	c := newClient("after")
	require.NoError(t, other.CreateClient(ctx, c))
	assert.Equal(t, c.ID, next(t, changes).ClientID, "listening again")
}

// The periodic resync runs while notifications keep arriving (issue 11
// item 6).
func TestPostgresWatchResyncsUnderASteadyStreamOfChanges(t *testing.T) {
	dsn := pgtest.New(t)
	ctx := context.Background()
	s, err := persist.OpenPostgres(ctx, dsn, discard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	changes := watchEvery(t, s, time.Second)
	require.True(t, next(t, changes).Resync)

	create(t, s, "busy")
	// Another instance changes the client every 200 ms, more often than
	// the resync interval.
	pctx, stop := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-pctx.Done():
				return nil
			case <-tick.C:
			}
			rate := float64(i)
			if _, err := s.UpdateLimits(pctx, "busy", messages.Limits{RatePerSec: &rate}); err != nil && pctx.Err() == nil {
				return err
			}
		}
	})
	defer func() { stop(); require.NoError(t, g.Wait()) }()
	for changed := 0; ; {
		ch := next(t, changes)
		if ch.Resync {
			assert.Positive(t, changed, "changes kept arriving before the resync")
			return
		}
		changed++
		require.Less(t, changed, 50, "no periodic resync within 50 changes (10 s)")
	}
}
