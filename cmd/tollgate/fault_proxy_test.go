package main

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// faultProxy forwards TCP connections on loopback to target. Paused, it
// stops passing bytes and leaves new connections unanswered: from the
// client's side, a server that hangs (a stalled disk, a network
// partition) rather than one that refuses. Resumed, everything held flows
// on. With a delay, every chunk of the server's answers is held that long
// first: a server that answers everything, only farther away.
type faultProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	done   chan struct{} // closed by close
	wg     sync.WaitGroup

	mu    sync.Mutex
	open  chan struct{} // closed while bytes may flow
	conns map[net.Conn]struct{}
}

// newFaultProxy starts a proxy to target. It is closed, with every
// connection, when the test ends.
func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	return newDelayedProxy(t, target, 0)
}

// newDelayedProxy is newFaultProxy holding the server's answers for delay.
func newDelayedProxy(t *testing.T, target string, delay time.Duration) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &faultProxy{ln: ln, target: target, delay: delay, done: make(chan struct{}),
		open: make(chan struct{}), conns: make(map[net.Conn]struct{})}
	close(p.open)
	p.wg.Add(1)
	go p.accept() // close waits for it
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// pause holds every byte and connection from now on.
func (p *faultProxy) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default: // paused already
	}
}

// resume lets everything held flow.
func (p *faultProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// gate waits while paused and reports false once the proxy is closed.
func (p *faultProxy) gate() bool {
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	select {
	case <-open:
		return true
	case <-p.done:
		return false
	}
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.handle(c) // close waits for it
	}
}

func (p *faultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		c.Close()
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *faultProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *faultProxy) handle(c net.Conn) {
	defer p.wg.Done()
	defer p.untrack(c)
	if !p.gate() {
		return
	}
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return // the client sees its connection close, as with a refusal
	}
	if !p.track(up) {
		return
	}
	defer p.untrack(up)
	copied := make(chan struct{})
	go func() { // handle waits for it below
		defer close(copied)
		p.pipe(c, up, p.delay)
	}()
	p.pipe(up, c, 0)
	<-copied
}

// pipe copies src to dst through the gate, each chunk after delay, then
// closes both so that the
// other direction ends too.
func (p *faultProxy) pipe(dst, src net.Conn, delay time.Duration) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			time.Sleep(delay) // the link's latency, not a wait for a condition
			if !p.gate() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// close stops the proxy, closes every connection and waits for its
// goroutines.
func (p *faultProxy) close() {
	p.mu.Lock()
	select {
	case <-p.done:
	default:
		close(p.done)
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}
