package persist_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

func TestOpenPostgresUnreachable(t *testing.T) {
	// A port that was free a moment ago: nothing listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())

	dsn := fmt.Sprintf("postgres://nobody@127.0.0.1:%d/x?sslmode=disable&connect_timeout=2", port)
	_, err = persist.OpenPostgres(context.Background(), dsn, discard())
	require.ErrorIs(t, err, messages.ErrUnavailable)

	_, err = persist.OpenPostgres(context.Background(), "postgres://x:%zz@", discard())
	require.Error(t, err)
	assert.NotErrorIs(t, err, messages.ErrUnavailable, "a bad DSN is not an outage")
}

// TestPostgresConnectionLost cuts the network between store and server:
// every operation reports ErrUnavailable, and the store recovers, data
// intact, once the server is reachable again.
func TestPostgresConnectionLost(t *testing.T) {
	dsn := pgtest.New(t)
	px := startProxy(t, serverAddr(t, dsn), 0)
	proxied, err := pgtest.WithAddr(dsn, px.port)
	require.NoError(t, err)
	s, err := persist.OpenPostgres(context.Background(), proxied, discard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	c := newClient("survivor")
	require.NoError(t, s.CreateClient(context.Background(), c))

	px.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ops := []struct {
		name string
		op   func() error
	}{
		{"Ping", func() error { return s.Ping(ctx) }},
		{"GetClient", func() error { _, err := s.GetClient(ctx, "survivor"); return err }},
		{"CreateClient", func() error { return s.CreateClient(ctx, newClient("new")) }},
		{"SaveStates", func() error {
			return s.SaveStates(ctx, []messages.BucketState{{ClientID: "survivor", LastRefill: epoch}})
		}},
		{"KeyRefs", func() error { _, err := s.KeyRefs(ctx); return err }},
	}
	for _, tt := range ops {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorIs(t, tt.op(), messages.ErrUnavailable)
		})
	}

	px = startProxy(t, serverAddr(t, dsn), px.port)
	// Broken idle connections are dropped as they are found: wait for a
	// clean ping rather than expecting the first one to succeed.
	require.Eventually(t, func() bool { return s.Ping(ctx) == nil }, 10*time.Second, 20*time.Millisecond)
	got, err := s.GetClient(ctx, "survivor")
	require.NoError(t, err)
	assertClient(t, c, got)
}

// TestPostgresConcurrentOpen starts several instances on one new database
// at once: the migration lock lets exactly one apply the schema.
func TestPostgresConcurrentOpen(t *testing.T) {
	dsn := pgtest.New(t)
	var g errgroup.Group
	for range 4 {
		g.Go(func() error {
			s, err := persist.OpenPostgres(context.Background(), dsn, discard())
			if err != nil {
				return err
			}
			return s.Close()
		})
	}
	require.NoError(t, g.Wait())

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var applied int
	require.NoError(t, conn.QueryRow(ctx,
		`SELECT count(*) FROM goose_db_version WHERE version_id = 1 AND is_applied`).Scan(&applied))
	assert.Equal(t, 1, applied)
}

// serverAddr is the network address of the server dsn names.
func serverAddr(t *testing.T, dsn string) net.Addr {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	if strings.HasPrefix(cfg.Host, "/") {
		sock := filepath.Join(cfg.Host, fmt.Sprintf(".s.PGSQL.%d", cfg.Port))
		return &net.UnixAddr{Name: sock, Net: "unix"}
	}
	addr, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	require.NoError(t, err)
	return addr
}

// proxy forwards TCP connections on 127.0.0.1 to a server; close cuts
// every connection, like a network outage.
type proxy struct {
	port   int
	ln     net.Listener
	target net.Addr
	wg     sync.WaitGroup // the accept loop and two copiers per connection
	mu     sync.Mutex
	conns  []net.Conn
	holes  []*atomic.Bool // per connection pair: drop its bytes
	closed bool
}

func startProxy(t *testing.T, target net.Addr, port int) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	require.NoError(t, err)
	p := &proxy{port: ln.Addr().(*net.TCPAddr).Port, ln: ln, target: target}
	p.wg.Add(1)
	go p.accept() // waited for by close
	t.Cleanup(p.close)
	return p
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial(p.target.Network(), p.target.String())
		hole := new(atomic.Bool)
		if err != nil || !p.track(hole, client, server) {
			client.Close()
			continue
		}
		p.wg.Add(2)
		go p.pipe(client, server, hole) // waited for by close
		go p.pipe(server, client, hole) // waited for by close
	}
}

// blackhole makes every connection open now drop what it carries, both
// ways, without closing: a half-open network path. New connections work.
func (p *proxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range p.holes {
		h.Store(true)
	}
}

// track registers a connection pair unless the proxy is closed.
func (p *proxy) track(hole *atomic.Bool, conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	p.conns = append(p.conns, conns...)
	p.holes = append(p.holes, hole)
	return true
}

func (p *proxy) pipe(dst, src net.Conn, hole *atomic.Bool) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !hole.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		_ = p.ln.Close()
		for _, c := range p.conns {
			_ = c.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}
