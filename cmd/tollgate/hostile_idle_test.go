package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The idle connections are held by a child process, this test binary run
// again as TestHostileIdleHelperProcess: both ends of 10,000 connections
// in one process would need 20,000 descriptors, more than the hard limit
// of many machines (and of CI containers, which may not raise it).
const (
	idleConns       = 10000
	envIdleAddr     = "TOLLGATE_TEST_IDLE_ADDR"
	envIdleConns    = "TOLLGATE_TEST_IDLE_CONNS"
	idleReadyPrefix = "idle-helper: holding "
)

// raiseFileLimit lifts this process's soft RLIMIT_NOFILE to its hard limit
// (Go does so at start on Linux; this keeps the test honest elsewhere) and
// returns how many descriptors it may keep open, less a reserve for
// everything else the process holds.
func raiseFileLimit(t *testing.T, reserve uint64) int {
	t.Helper()
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Logf("cannot raise RLIMIT_NOFILE to %d: %v", lim.Max, err)
			require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
		}
	}
	if lim.Cur <= reserve {
		return 0
	}
	return int(min(lim.Cur-reserve, 1<<20))
}

// TestHostileIdleKeepAliveConnections: 10,000 idle keep-alive connections
// (each made one request, then went quiet) do not stop service to others.
func TestHostileIdleKeepAliveConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 connections")
	}
	n := min(idleConns, raiseFileLimit(t, 1000))
	if n < idleConns {
		t.Logf("RLIMIT_NOFILE allows only %d idle connections in this process, not %d", n, idleConns)
	}
	require.Positive(t, n)
	rec := newRecorder(t)
	in := start(t, baseConfig(t, rec.url))
	key := createKey(t, in.addr, "", "busy")

	child := startIdleHelper(t, in.addr, n)
	held := child.held
	t.Logf("%d idle keep-alive connections held by the helper process", held)
	if held < n {
		t.Logf("the helper's file limit allowed %d of %d", held, n)
	}
	require.Greater(t, held, n/2, "helper held too few connections to mean anything")

	// While they are held, new clients are served: forwarded requests on
	// fresh connections, admin writes and probes.
	began := time.Now()
	var slowest time.Duration
	for i := range 50 {
		t0 := time.Now()
		code, body := call(t, http.MethodGet, "http://"+in.addr+"/served/"+strconv.Itoa(i), key, "")
		require.Equal(t, http.StatusOK, code, body)
		slowest = max(slowest, time.Since(t0))
	}
	code, body := call(t, http.MethodPost, "http://"+in.addr+"/clients", "", `{"client_id":"newcomer"}`)
	require.Equal(t, http.StatusCreated, code, body)
	code, _ = call(t, http.MethodGet, "http://"+in.addr+"/readyz", "", "")
	require.Equal(t, http.StatusOK, code)
	t.Logf("52 requests beside %d idle connections in %v, slowest %v", held, time.Since(began), slowest)

	// The idle connections are still usable: the helper sends one more
	// request on each of a sample and checks the answers.
	require.NoError(t, child.release())
	code, body = call(t, http.MethodGet, "http://"+in.addr+"/after", key, "")
	assert.Equal(t, http.StatusOK, code, body)
}

// idleHelper is the child process holding idle connections.
type idleHelper struct {
	held    int
	release func() error // asks the child to finish, waits for it
}

// startIdleHelper runs this test binary as TestHostileIdleHelperProcess
// holding n connections to addr, and waits until they are all open.
func startIdleHelper(t *testing.T, addr string, n int) *idleHelper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHostileIdleHelperProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), envIdleAddr+"="+addr, envIdleConns+"="+strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())

	ready := make(chan int, 1)
	var output strings.Builder
	var mu sync.Mutex
	copied := make(chan struct{})
	go func() { // ends when the child exits and closes stdout
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			output.WriteString(line + "\n")
			mu.Unlock()
			if rest, ok := strings.CutPrefix(line, idleReadyPrefix); ok {
				held, _ := strconv.Atoi(strings.Fields(rest)[0])
				ready <- held
			}
		}
	}()
	var once sync.Once
	var waitErr error
	finish := func() error {
		once.Do(func() {
			stdin.Close()
			<-copied
			waitErr = cmd.Wait()
		})
		return waitErr
	}
	t.Cleanup(func() {
		if err := finish(); err != nil {
			mu.Lock()
			t.Errorf("idle helper: %v\n%s\n%s", err, output.String(), stderr.String())
			mu.Unlock()
		}
	})
	select {
	case held := <-ready:
		return &idleHelper{held: held, release: finish}
	case <-copied:
		t.Fatalf("idle helper exited early: %v\n%s\n%s", cmd.Wait(), output.String(), stderr.String())
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatal("idle helper did not open its connections within 2 minutes")
	}
	return nil
}

// TestHostileIdleHelperProcess is not a test: it is the child process of
// TestHostileIdleKeepAliveConnections, and skips unless run as one. It
// opens the connections, makes one request on each, reports how many it
// holds, waits for its stdin to close, then checks that a sample of the
// connections still answers and closes them all.
func TestHostileIdleHelperProcess(t *testing.T) {
	addr := os.Getenv(envIdleAddr)
	if addr == "" {
		t.Skip("child process of TestHostileIdleKeepAliveConnections")
	}
	n, err := strconv.Atoi(os.Getenv(envIdleConns))
	require.NoError(t, err)
	n = min(n, raiseFileLimit(t, 100))

	conns := make([]*idleConn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	const workers = 16
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				c, err := dialIdle(addr)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	close(errs)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.conn.Close()
			}
		}
	}()
	for err := range errs {
		require.NoError(t, err)
	}
	fmt.Printf("%s%d connections\n", idleReadyPrefix, n)
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent is done

	for i := 0; i < n; i += max(1, n/100) {
		require.NoError(t, conns[i].get(), "connection %d after idling", i)
	}
}

// idleConn is one kept-alive connection of the helper.
type idleConn struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialIdle(addr string) (*idleConn, error) {
	conn, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	c := &idleConn{conn: conn, br: bufio.NewReaderSize(conn, 512)}
	if err := c.get(); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// get sends GET /healthz on the connection and reads a 200 answer.
func (c *idleConn) get() error {
	if err := c.conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(c.conn, "GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}
