package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/persist/pgtest"
)

// closedPortDSN is a DSN of a loopback port nothing listens on.
func closedPortDSN(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	dsn, err := pgtest.WithAddr("postgres://tollgate@127.0.0.1:5432/tollgate?sslmode=disable", port)
	require.NoError(t, err)
	return dsn
}

// runAsync runs Tollgate with cfg in the background; the returned channel
// has run's result.
func runAsync(t *testing.T, ctx context.Context, cfg map[string]any, logs *logBuffer) <-chan error {
	t.Helper()
	dsn, _ := cfg["database_url"].(string)
	t.Setenv("DATABASE_URL", dsn)
	done := make(chan error, 1)
	args := []string{"-config", writeConfig(t, cfg), "-addr", "127.0.0.1:0"}
	go func() { done <- run(ctx, args, logs) }()
	return done
}

// A PostgreSQL that cannot be reached at start is retried for
// database_connect_timeout, each failure logged, then Tollgate exits 1
// (issue 11 item 8).
func TestUnreachableDatabaseAtStartIsRetriedThenExits1(t *testing.T) {
	cfg := baseConfig(t, "http://127.0.0.1:1")
	cfg["database_url"] = closedPortDSN(t)
	cfg["database_connect_timeout"] = 1
	logs := &logBuffer{}
	var err error
	select {
	case err = <-runAsync(t, t.Context(), cfg, logs):
	case <-time.After(30 * time.Second):
		t.Fatalf("still starting after 30 s:\n%s", logs)
	}
	require.Error(t, err)
	assert.Equal(t, 1, exitCode(err))
	assert.GreaterOrEqual(t, len(logs.lines("database unreachable; retrying")), 2, "%s", logs)
	assert.Contains(t, err.Error(), "database_connect_timeout")
}

// A database that comes up while Tollgate waits for it is used.
func TestDatabaseThatComesUpDuringStartIsWaitedFor(t *testing.T) {
	pg := pgtest.StartServer(t)
	pg.Stop()
	cfg := baseConfig(t, "http://127.0.0.1:1")
	cfg["database_url"] = pg.DSN()
	cfg["database_connect_timeout"] = 60
	logs := &logBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := runAsync(t, ctx, cfg, logs)
	eventually(t, func() bool { return len(logs.lines("database unreachable; retrying")) > 0 }, "a failed attempt")
	pg.Start()
	eventually(t, func() bool { return len(logs.lines("listening")) > 0 }, "listening once the database is up")
	cancel()
	require.NoError(t, <-done)
}
