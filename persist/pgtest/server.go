package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Bounds on the server commands, so a wedged server fails the test
// instead of hanging it.
const (
	initdbTimeout = 2 * time.Minute
	pgCtlTimeout  = time.Minute
	pgCtlWait     = "30" // seconds pg_ctl -w waits for start or stop
	startAttempts = 5
)

// serverSettings go into postgresql.conf: a disposable server, fast and
// reachable on loopback only. The socket directory is added per server.
var serverSettings = []string{
	"listen_addresses = '127.0.0.1'",
	"fsync = off",
	"synchronous_commit = off",
	"full_page_writes = off",
	"max_connections = 100",
}

// Server is a private PostgreSQL cluster for one test, which the test may
// stop and start again: fault tests take the store away without disturbing
// the other tests sharing the server of DATABASE_URL. Its methods must be
// called from the test's goroutine (they fail the test on error).
type Server struct {
	t    testing.TB
	bin  string // directory of initdb, pg_ctl, postgres
	dir  string // data/, the unix socket and postgres.log
	port int
	// asPostgres runs the server commands as the postgres user: PostgreSQL
	// refuses to run as root.
	asPostgres bool
}

// StartServer initialises and starts a private cluster on a free port of
// 127.0.0.1 (trust auth, user postgres, fsync off). It is removed when the
// test ends. Without server binaries (PG_BINDIR, the highest
// /usr/lib/postgresql/*/bin, pg_config --bindir, then PATH) it skips t, or
// fails it when REQUIRE_POSTGRES=1. Running as root needs a postgres user.
func StartServer(t testing.TB) *Server {
	t.Helper()
	bin := serverBinDir()
	if bin == "" {
		if os.Getenv("REQUIRE_POSTGRES") == "1" {
			t.Fatal("pgtest: REQUIRE_POSTGRES=1 but no PostgreSQL server binaries were found (set PG_BINDIR)")
		}
		t.Skip("pgtest: no PostgreSQL server binaries found, skipping (set PG_BINDIR)")
	}
	dir, err := os.MkdirTemp("", "tollgate-pgsrv-")
	if err != nil {
		t.Fatalf("pgtest: temp dir: %v", err)
	}
	s := &Server{t: t, bin: bin, dir: dir, asPostgres: os.Geteuid() == 0}
	t.Cleanup(s.cleanup)
	if s.asPostgres {
		if err := chownToPostgres(dir); err != nil {
			t.Fatalf("pgtest: running as root: %v", err)
		}
	}
	if out, err := s.pg(initdbTimeout, "initdb", "-D", s.data(), "-A", "trust", "-U", "postgres",
		"-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	conf := strings.Join(append(slices.Clone(serverSettings),
		"unix_socket_directories = '"+strings.ReplaceAll(dir, "'", "''")+"'"), "\n")
	if err := appendFile(filepath.Join(s.data(), "postgresql.conf"), "\n"+conf+"\n"); err != nil {
		t.Fatalf("pgtest: configure server: %v", err)
	}
	// A port found free can be taken before the server binds it: retry.
	var lastErr error
	for range startAttempts {
		if s.port, lastErr = freePort(); lastErr != nil {
			continue
		}
		if lastErr = s.start(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("pgtest: start server: %v\n%s", lastErr, s.logTail())
	return nil
}

// DSN is the URL of the server's postgres database as its superuser.
func (s *Server) DSN() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// Addr is the server's host:port, for tests that put a proxy in front.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Stop shuts the server down the way an operator does (pg_ctl stop -m
// fast): sessions are terminated, clients see their connections close,
// and new connections are refused until Start.
func (s *Server) Stop() {
	s.t.Helper()
	if out, err := s.pg(pgCtlTimeout, "pg_ctl", "-D", s.data(), "stop", "-m", "fast", "-w", "-t", pgCtlWait); err != nil {
		s.t.Fatalf("pgtest: stop server: %v\n%s", err, out)
	}
}

// Start starts a stopped server again on the same port, so DSN is
// unchanged.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("pgtest: start server again on port %d: %v\n%s", s.port, err, s.logTail())
	}
}

func (s *Server) start() error {
	out, err := s.pg(pgCtlTimeout, "pg_ctl", "-D", s.data(), "-l", s.logFile(), "-w", "-t", pgCtlWait,
		"-o", "-p "+strconv.Itoa(s.port), "start")
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// cleanup stops the server at once, whatever state it is in, and removes
// its files.
func (s *Server) cleanup() {
	if _, err := os.Stat(filepath.Join(s.data(), "postmaster.pid")); err == nil {
		if out, err := s.pg(pgCtlTimeout, "pg_ctl", "-D", s.data(), "stop", "-m", "immediate", "-w", "-t", pgCtlWait); err != nil {
			s.t.Logf("pgtest: stop server: %v\n%s", err, out)
		}
	}
	if err := os.RemoveAll(s.dir); err != nil {
		s.t.Logf("pgtest: remove %s: %v", s.dir, err)
	}
}

func (s *Server) data() string    { return filepath.Join(s.dir, "data") }
func (s *Server) logFile() string { return filepath.Join(s.dir, "postgres.log") }

// logTail is the end of the server log, for failure messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logFile())
	if err != nil {
		return ""
	}
	const max = 4 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// pg runs one of the server's programs, as the postgres user when we are
// root, within timeout, and returns its combined output.
func (s *Server) pg(timeout time.Duration, prog string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	name, argv := filepath.Join(s.bin, prog), args
	if s.asPostgres {
		name, argv = "runuser", append([]string{"-u", "postgres", "--", filepath.Join(s.bin, prog)}, args...)
	}
	cmd := exec.CommandContext(ctx, name, argv...)
	cmd.Dir = s.dir // the postgres user may not be allowed into ours
	// pg_ctl start leaves the postmaster holding inherited pipes: without
	// a bound on that wait, Output would block until the server stops.
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s: %w", prog, timeout, ctx.Err())
	}
	return out, err
}

// serverBinDir finds the server binaries as scripts/pg-bindir.sh does.
func serverBinDir() string {
	if dir := os.Getenv("PG_BINDIR"); dir != "" {
		if hasServer(dir) {
			return dir
		}
		return ""
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return versionOf(b) - versionOf(a) })
	for _, d := range dirs {
		if hasServer(d) {
			return d
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); hasServer(d) {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && hasServer(filepath.Dir(p)) {
		return filepath.Dir(p)
	}
	return ""
}

// versionOf is the major version in /usr/lib/postgresql/<v>/bin, 0 if none.
func versionOf(dir string) int {
	v, _, _ := strings.Cut(filepath.Base(filepath.Dir(dir)), ".")
	n, _ := strconv.Atoi(v)
	return n
}

func hasServer(dir string) bool {
	for _, prog := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, prog))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func chownToPostgres(dir string) error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("need a postgres user to run the server as: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return err
	}
	return os.Chown(dir, uid, gid)
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// freePort returns a loopback port nothing listens on right now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
