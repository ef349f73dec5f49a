package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/config"
)

// serverCert is the certificate the main and admin ports present (SPEC
// 10). Each TLS handshake reads the current one, so a SIGHUP that swaps it
// reaches new connections while open ones keep the one they agreed on.
type serverCert struct {
	cert atomic.Pointer[tls.Certificate]
}

// loadTLS reads the files of cfg's TLS fields: the servers' certificate
// (nil when they speak plain HTTP) and the roots for https backends.
func loadTLS(cfg *config.Config) (*serverCert, *backendTLS, error) {
	bt, err := newBackendTLS(cfg.LoadBalancer.CAFile)
	if err != nil || !cfg.TLSEnabled() {
		return nil, bt, err
	}
	c, err := loadKeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, nil, err
	}
	cert := &serverCert{}
	cert.cert.Store(c)
	return cert, bt, nil
}

// loadKeyPair reads a PEM certificate and key. Its errors are
// configuration errors naming the field.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, &config.Error{Path: "tls_cert_file", Msg: fmt.Sprintf("%q with tls_key_file %q: %v", certFile, keyFile, err), Err: err}
	}
	return &c, nil
}

// tlsConfig is the servers' TLS configuration: TLS 1.2 and later, the
// certificate read per handshake. http.Server.ServeTLS adds HTTP/2 and
// HTTP/1.1 to ALPN.
func (s *serverCert) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}

// backendTLS verifies https backends against the system roots plus the
// certificates of load_balancer.ca_file. The roots are swapped whole on
// SIGHUP; a connection verifies against those current when it is made.
// A transport's TLSClientConfig is fixed once used, hence the dial hook.
type backendTLS struct {
	roots  atomic.Pointer[x509.CertPool] // nil: the system roots alone
	dialer net.Dialer
}

// backendHandshakeTimeout bounds a backend's TLS handshake beside the
// attempt's own deadline.
const backendHandshakeTimeout = 10 * time.Second

func newBackendTLS(caFile string) (*backendTLS, error) {
	roots, err := loadRoots(caFile)
	if err != nil {
		return nil, err
	}
	b := &backendTLS{dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}}
	b.roots.Store(roots)
	return b, nil
}

// loadRoots returns the system roots plus those of caFile; nil, meaning
// the system roots alone, for "". Its errors are configuration errors
// naming the field.
func loadRoots(caFile string) (*x509.CertPool, error) {
	if caFile == "" {
		return nil, nil
	}
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, &config.Error{Path: "load_balancer.ca_file", Msg: err.Error(), Err: err}
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool() // no system roots on this host: ca_file alone
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, &config.Error{Path: "load_balancer.ca_file", Msg: fmt.Sprintf("%q holds no PEM certificate", caFile)}
	}
	return pool, nil
}

// DialTLSContext connects to an https backend and completes the handshake,
// verifying the backend's certificate for the host it was dialled by.
func (b *backendTLS) DialTLSContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := b.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	tc := tls.Client(conn, &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    b.roots.Load(),
		ServerName: host,
		NextProtos: []string{"http/1.1"},
	})
	hctx, cancel := context.WithTimeout(ctx, backendHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return tc, nil
}
