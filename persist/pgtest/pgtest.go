// Package pgtest gives tests a fresh PostgreSQL database of their own on the
// server named by DATABASE_URL (make test starts a throwaway one). Each
// database is created for one test and dropped, connections and all, when
// the test ends, so tests never see each other's rows and may run in
// parallel.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DBPrefix starts the name of every database New creates, so stray ones
// from a killed run are easy to find and drop.
const DBPrefix = "tollgate_t_"

// New creates a database for t and returns its DSN. Without DATABASE_URL it
// skips t, or fails it when REQUIRE_POSTGRES=1 (CI must not skip silently).
// DATABASE_URL may be a URL or a keyword/value DSN; the role it names must
// be allowed to create databases.
func New(t testing.TB) string {
	t.Helper()
	base := os.Getenv("DATABASE_URL")
	if base == "" {
		if os.Getenv("REQUIRE_POSTGRES") == "1" {
			t.Fatal("pgtest: REQUIRE_POSTGRES=1 but DATABASE_URL is unset (make test starts a throwaway PostgreSQL)")
		}
		t.Skip("pgtest: DATABASE_URL unset, skipping PostgreSQL test (make test starts a throwaway PostgreSQL)")
	}
	name := DBPrefix + randomSuffix(t)
	dsn, err := withDatabase(base, name)
	if err != nil {
		t.Fatalf("pgtest: DATABASE_URL: %v", err)
	}
	// Identifiers are safe to splice: name is DBPrefix plus hex digits.
	admin(t, base, "CREATE DATABASE "+name)
	t.Cleanup(func() { admin(t, base, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	return dsn
}

// admin runs one statement on the DATABASE_URL database.
func admin(t testing.TB, dsn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: connect to DATABASE_URL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

func randomSuffix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("pgtest: random name: %v", err)
	}
	return hex.EncodeToString(b)
}

// withDatabase returns dsn with its database replaced by name.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", err
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	// Keyword/value form: a later keyword overrides an earlier one.
	if _, err := pgx.ParseConfig(dsn); err != nil {
		return "", err
	}
	return dsn + " dbname=" + name, nil
}

// WithAddr returns dsn pointing at 127.0.0.1:port instead of its server,
// for tests that put a proxy between a store and PostgreSQL.
func WithAddr(dsn string, port int) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("pgtest: parse dsn: %w", err)
		}
		u.Host = fmt.Sprintf("127.0.0.1:%d", port)
		return u.String(), nil
	}
	return fmt.Sprintf("%s host=127.0.0.1 port=%d", dsn, port), nil
}
