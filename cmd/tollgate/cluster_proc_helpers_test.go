package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The process harness: Tollgate run as an operator runs it, one OS process
// per instance, for the tests and the bench that measure several instances
// sharing a bucket (SPEC 9). In-process instances (start) share the test's
// scheduler, its -race instrumentation and its garbage collector; processes
// do not, so what is measured is the product.

// builtBinary is the tollgate binary, built once per run of the test
// binary into a temporary directory that TestMain removes at the end.
var builtBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// tollgateBinary returns the path of the binary, building it on first use.
// It is built without -race even when the tests run with it: the processes
// are the system under test, and the race detector would slow them several
// fold, which the cluster figures would then measure.
func tollgateBinary(t *testing.T) string {
	t.Helper()
	builtBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "tollgate-bin-")
		if err != nil {
			builtBinary.err = err
			return
		}
		builtBinary.dir = dir
		path := filepath.Join(dir, "tollgate")
		if out, err := exec.Command("go", "build", "-o", path, ".").CombinedOutput(); err != nil {
			builtBinary.err = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		builtBinary.path = path
	})
	require.NoError(t, builtBinary.err)
	return builtBinary.path
}

// removeBuiltBinary wraps the tests' run so that the binary's directory
// goes once every test is done (TestMain).
type removeBuiltBinary struct{ m *testing.M }

func (r removeBuiltBinary) Run() int {
	code := r.m.Run()
	if builtBinary.dir != "" {
		_ = os.RemoveAll(builtBinary.dir)
	}
	return code
}

// proc is one Tollgate process. Its instance has the main and admin
// addresses (the same when admin_port is 0) and the JSON log lines of its
// stdout, so the helpers written for in-process instances (createClient,
// forward, logs.lines) work on it; instance.stop is terminate.
type proc struct {
	*instance
	cmd    *exec.Cmd
	stderr *logBuffer
	exited chan struct{} // closed once the process has exited and waitErr is set
	// waitErr is cmd.Wait's answer; read it only after exited is closed.
	waitErr error
}

// How long a process may take to start listening, and to exit after
// SIGTERM (shutdown_timeout is 10 s by default, and its leases are handed
// back within that).
const (
	procStartTimeout = 30 * time.Second
	procStopTimeout  = 20 * time.Second
)

// spawn starts the binary with cfg on loopback ports and returns once it
// listens. The config's database_url is passed as DATABASE_URL, as start
// does, so that make test's DATABASE_URL does not override it (empty runs
// the embedded store). The process is killed when the test ends if it is
// still running.
func spawn(t *testing.T, cfg map[string]any, extraArgs ...string) *proc {
	t.Helper()
	bin := tollgateBinary(t)
	args := append([]string{"-config", writeConfig(t, cfg), "-addr", "127.0.0.1:0"}, extraArgs...)
	cmd := exec.Command(bin, args...)
	dsn, _ := cfg["database_url"].(string)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dsn)
	logs := &logBuffer{}
	p := &proc{cmd: cmd, stderr: &logBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = logs, p.stderr
	require.NoError(t, cmd.Start())
	go func() { // waited for through exited, by kill at the latest
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	p.instance = &instance{logs: logs, stop: p.terminate}
	t.Cleanup(func() { _ = p.kill() })

	// The admin API has its own server, and "listening" line, when
	// admin_port or -admin-addr says so (run.go's listen).
	separate := slices.ContainsFunc(extraArgs, func(a string) bool { return strings.HasPrefix(a, "-admin-addr") })
	if port, ok := cfg["admin_port"]; ok && fmt.Sprint(port) != "0" {
		separate = true
	}
	deadline := time.NewTimer(procStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, l := range logs.lines("listening") {
			switch l["server"] {
			case "main":
				p.addr, _ = l["addr"].(string)
			case "admin":
				p.adminAddr, _ = l["addr"].(string)
			}
		}
		if p.addr != "" && !separate {
			p.adminAddr = p.addr
		}
		if p.addr != "" && p.adminAddr != "" {
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("tollgate process ended at start: %v\n%s%s", p.waitErr, logs, p.stderr)
		case <-deadline.C:
			t.Fatalf("tollgate process did not listen within %s:\n%s%s", procStartTimeout, logs, p.stderr)
		case <-tick.C:
		}
	}
}

// terminate sends SIGTERM and waits for the process to exit; an exit
// other than 0, or none within procStopTimeout (then it is killed), is an
// error. Calling it again returns the first answer.
func (p *proc) terminate() error {
	select {
	case <-p.exited:
		return p.exitErr()
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.exited:
		return p.exitErr()
	case <-time.After(procStopTimeout):
		_ = p.kill()
		return fmt.Errorf("tollgate process did not exit within %s of SIGTERM", procStopTimeout)
	}
}

// kill ends the process with SIGKILL (kill -9) and waits for it. Killing
// a process that has exited does nothing.
func (p *proc) kill() error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-p.exited
	return nil
}

func (p *proc) exitErr() error {
	if p.waitErr != nil {
		return fmt.Errorf("tollgate process: %w\n%s", p.waitErr, p.stderr)
	}
	return nil
}

// troubles returns the process's log lines at warn or error, and what it
// wrote to stderr, for a failure message or a run's report.
func (p *proc) troubles() []string {
	var out []string
	for _, l := range strings.Split(p.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && (m["level"] == "WARN" || m["level"] == "ERROR") {
			out = append(out, l)
		}
	}
	if s := strings.TrimSpace(p.stderr.String()); s != "" {
		out = append(out, "stderr: "+s)
	}
	return out
}
