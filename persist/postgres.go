package persist

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/migrations"
)

// Pool and query limits. Settings given in the DSN (pool_max_conns,
// connect_timeout, ...) win over these.
const (
	pgMaxConns        = 16
	pgMinConns        = 1
	pgConnectTimeout  = 5 * time.Second
	pgMaxConnIdleTime = 5 * time.Minute
	pgMaxConnLifetime = 30 * time.Minute
	pgHealthCheck     = 15 * time.Second
	// pgOpTimeout bounds an operation whose ctx has no deadline, so a
	// server that stops answering shows up as ErrUnavailable, not a hang:
	// pgx cancels the statement on the server when it passes. There is no
	// statement_timeout startup parameter (PgBouncer refuses it, and it
	// would cap migrations); set one on the role if wanted (README).
	pgOpTimeout = 15 * time.Second
)

// migrationLockID is the advisory lock held while migrating: "tollgate"
// in ASCII, so it cannot collide with goose's default lock of another
// application sharing the database.
const migrationLockID int64 = 0x746f6c6c67617465

// Postgres is the Store on PostgreSQL. It is safe for concurrent use; its
// connection pool is its only state. Times are stored with microsecond
// precision and returned in UTC.
//
// Everything that talks to the server lives in this package: the pool here
// and the queries in postgres_queries.go; a LISTEN connection for change
// notifications belongs beside them, taken from the same pool.
type Postgres struct {
	pool   *pgxpool.Pool
	log    *slog.Logger
	closed atomic.Bool // set by Close: every error afterwards is ErrUnavailable
}

var _ Store = (*Postgres)(nil)

// OpenPostgres connects to dsn and brings the schema up to date with the
// migrations package's files before returning. Several instances may open
// the same database at once: migrations run under an advisory lock and
// the others wait for it. A server that cannot be reached is
// ErrUnavailable, so callers can retry.
func OpenPostgres(ctx context.Context, dsn string, logger *slog.Logger) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("persist: parse database url: %w", err)
	}
	tune(cfg, dsn)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("persist: open pool: %w", err)
	}
	p := &Postgres{pool: pool, log: logger.With("store", "postgres")}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, p.wrap("connect", err)
	}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

// tune applies our pool defaults where the DSN did not set its own.
func tune(cfg *pgxpool.Config, dsn string) {
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = pgMaxConns
	}
	if !strings.Contains(dsn, "pool_min_conns") {
		cfg.MinConns = pgMinConns
	}
	if !strings.Contains(dsn, "pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = pgMaxConnIdleTime
	}
	if !strings.Contains(dsn, "pool_max_conn_lifetime") {
		cfg.MaxConnLifetime = pgMaxConnLifetime
		cfg.MaxConnLifetimeJitter = pgMaxConnLifetime / 10
	}
	if !strings.Contains(dsn, "pool_health_check_period") {
		cfg.HealthCheckPeriod = pgHealthCheck
	}
	cc := cfg.ConnConfig
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = pgConnectTimeout
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "tollgate"
	}
}

// migrate applies pending migrations through goose over the pool.
func (p *Postgres) migrate(ctx context.Context) error {
	db := stdlib.OpenDBFromPool(p.pool)
	defer db.Close()
	// Try the lock every second for up to five minutes: a concurrent
	// instance's migration is short, and ctx can end the wait sooner.
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(migrationLockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return fmt.Errorf("persist: migration lock: %w", err)
	}
	prov, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(p.log.With("component", "migrations")),
	)
	if err != nil {
		return fmt.Errorf("persist: migrations: %w", err)
	}
	if _, err := prov.Up(ctx); err != nil {
		return p.wrap("migrate", err)
	}
	return nil
}

// Ping reports whether the server answers; an unreachable server or a
// closed store is ErrUnavailable.
func (p *Postgres) Ping(ctx context.Context) error {
	ctx, cancel := opContext(ctx)
	defer cancel()
	return p.wrap("ping", p.pool.Ping(ctx))
}

// Close closes the pool, waiting for connections in use to be returned.
// Afterwards every method fails with ErrUnavailable. It is safe to call
// more than once.
func (p *Postgres) Close() error {
	p.closed.Store(true)
	p.pool.Close()
	return nil
}

// opContext gives ctx the default operation deadline if it has none.
func opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, pgOpTimeout)
}

// wrap prefixes err with the operation and maps it onto the package's
// error vocabulary; nil stays nil.
func (p *Postgres) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("persist: %s: %w", op, p.classify(err))
}

func (p *Postgres) classify(err error) error {
	var pgErr *pgconn.PgError
	switch {
	case p.closed.Load():
		return fmt.Errorf("%w: store closed: %w", messages.ErrUnavailable, err)
	case errors.Is(err, pgx.ErrNoRows):
		return messages.ErrNotFound
	case errors.As(err, &pgErr):
		return classifyServer(pgErr)
	case errors.Is(err, context.Canceled):
		// The caller gave up; that says nothing about the server.
		return err
	case unreachable(err):
		return fmt.Errorf("%w: %w", messages.ErrUnavailable, err)
	}
	return err
}

// classifyServer maps an error the server sent.
func classifyServer(e *pgconn.PgError) error {
	switch {
	case e.Code == "23505": // unique_violation
		field := "client_id"
		if e.ConstraintName == "clients_api_key_hash_key" {
			field = "api_key"
		}
		return fmt.Errorf("%w: %s already exists", messages.ErrConflict, field)
	case e.Code == "23514": // check_violation: clients_<column>_check
		field := strings.TrimSuffix(strings.TrimPrefix(e.ConstraintName, "clients_"), "_check")
		return fmt.Errorf("%w: %s out of range: %w", ErrInvalid, field, e)
	case e.Code == "23502", strings.HasPrefix(e.Code, "22"): // not null, data exception
		return fmt.Errorf("%w: %w", ErrInvalid, e)
	case strings.HasPrefix(e.Code, "08"), // connection exception
		strings.HasPrefix(e.Code, "53"),  // insufficient resources, too many connections
		strings.HasPrefix(e.Code, "57P"), // server shutting down or starting
		strings.HasPrefix(e.Code, "58"),  // server I/O error
		e.Code == "55P03",                // lock_not_available: lock_timeout
		e.Code == "57014":                // query_canceled: statement_timeout
		return fmt.Errorf("%w: %w", messages.ErrUnavailable, e)
	}
	return e
}

// unreachable reports whether err means the server could not be reached
// or stopped answering: a failed dial, a broken connection, a timeout.
func unreachable(err error) bool {
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) ||
		errors.As(err, &netErr) ||
		pgconn.Timeout(err) ||
		pgconn.SafeToRetry(err) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}
