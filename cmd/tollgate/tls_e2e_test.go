package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testCert is a self-signed certificate for 127.0.0.1 and localhost,
// generated for one test, and the PEM files holding it.
type testCert struct {
	cert     *x509.Certificate
	certFile string
	keyFile  string
	pair     tls.Certificate
}

// newTestCert writes a fresh certificate and key under dir as name.pem and
// name.key.
func newTestCert(t *testing.T, dir, name string) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tollgate test " + name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	tc := testCert{cert: cert, certFile: filepath.Join(dir, name+".pem"), keyFile: filepath.Join(dir, name+".key")}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	require.NoError(t, os.WriteFile(tc.certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(tc.keyFile, keyPEM, 0o600))
	tc.pair, err = tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	return tc
}

// tlsClient returns a client trusting certs, speaking HTTP/2 when h2 is
// true and HTTP/1.1 only otherwise.
func tlsClient(t *testing.T, h2 bool, certs ...*x509.Certificate) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // no HTTP/2
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// tlsDo sends a request and returns the answer with its body read.
func tlsDo(t *testing.T, hc *http.Client, method, url, key, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := hc.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, string(data)
}

func TestTLSServesHTTP1AndHTTP2AndReloadsTheCertificate(t *testing.T) {
	dir := t.TempDir()
	first := newTestCert(t, dir, "first")
	backend := newLiveBackend(t)
	cfg := baseConfig(t, backend.url)
	cfg["tls_cert_file"], cfg["tls_key_file"] = first.certFile, first.keyFile
	path := writeConfig(t, cfg)
	in := start(t, cfg, "-config", path, "-admin-addr", "127.0.0.1:0")
	adminAddr := in.admin(t).addr

	h1 := tlsClient(t, false, first.cert)
	res, body := tlsDo(t, h1, http.MethodPost, "https://"+adminAddr+"/clients", "", `{"client_id":"tls","capacity":100}`)
	require.Equal(t, http.StatusCreated, res.StatusCode, body)
	var c apiClient
	require.NoError(t, json.Unmarshal([]byte(body), &c))

	for _, tc := range []struct {
		name  string
		hc    *http.Client
		proto int
	}{{"HTTP/1.1", h1, 1}, {"HTTP/2", tlsClient(t, true, first.cert), 2}} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := tlsDo(t, tc.hc, http.MethodGet, "https://"+in.addr+"/x", c.APIKey, "")
			require.Equal(t, http.StatusOK, res.StatusCode, body)
			assert.Equal(t, tc.proto, res.ProtoMajor)
			assert.Equal(t, "100", res.Header.Get("X-RateLimit-Limit"))
			assert.NotEmpty(t, res.Header.Get("RateLimit"))
			// A body of unknown length: chunked in HTTP/1.1, which closes
			// the connection after the answer; plain DATA frames in HTTP/2.
			req, err := http.NewRequest(http.MethodPost, "https://"+in.addr+"/up", io.MultiReader(strings.NewReader("a"), strings.NewReader("b")))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+c.APIKey)
			res, err = tc.hc.Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, res.Body)
			_ = res.Body.Close()
			assert.Equal(t, http.StatusOK, res.StatusCode)
			res, _ = tlsDo(t, tc.hc, http.MethodGet, "https://"+adminAddr+"/healthz", "", "")
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, tc.proto, res.ProtoMajor)
		})
	}
	// An HTTP/2 connection open across the reload keeps working with the
	// certificate it agreed on; new connections get the new one.
	second := newTestCert(t, dir, "second")
	open := tlsClient(t, true, first.cert, second.cert)
	res, _ = tlsDo(t, open, http.MethodGet, "https://"+in.addr+"/x", c.APIKey, "")
	require.Equal(t, first.cert.SerialNumber, res.TLS.PeerCertificates[0].SerialNumber)

	require.NoError(t, os.Rename(second.certFile, first.certFile))
	require.NoError(t, os.Rename(second.keyFile, first.keyFile))
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	opsEventually(t, func() bool { return len(in.logs.lines("config reloaded")) == 1 }, "the reload to be logged")

	fresh := tlsClient(t, false, first.cert, second.cert)
	for _, addr := range []string{in.addr, adminAddr} {
		res, _ = tlsDo(t, fresh, http.MethodGet, "https://"+addr+"/healthz", c.APIKey, "")
		assert.Equal(t, second.cert.SerialNumber, res.TLS.PeerCertificates[0].SerialNumber, addr)
	}
	res, body = tlsDo(t, open, http.MethodGet, "https://"+in.addr+"/x", c.APIKey, "")
	assert.Equal(t, http.StatusOK, res.StatusCode, body)
	assert.Equal(t, first.cert.SerialNumber, res.TLS.PeerCertificates[0].SerialNumber, "the open connection is the same one")

	// A broken certificate fails the reload and keeps the running one.
	require.NoError(t, os.WriteFile(first.certFile, []byte("not PEM"), 0o600))
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	opsEventually(t, func() bool {
		return len(in.logs.lines("config reload failed; keeping the running configuration")) == 1
	}, "the failed reload to be logged")
	assert.Contains(t, in.logs.lines("config reload failed; keeping the running configuration")[0]["err"], "tls_cert_file")
	res, _ = tlsDo(t, tlsClient(t, false, second.cert), http.MethodGet, "https://"+adminAddr+"/healthz", "", "")
	assert.Equal(t, http.StatusOK, res.StatusCode)
	require.NoError(t, in.stop())
}

func TestTLSConfigErrorsExitWithCode2(t *testing.T) {
	dir := t.TempDir()
	good := newTestCert(t, dir, "good")
	other := newTestCert(t, dir, "other")
	tests := []struct {
		name      string
		cert, key string
		ca        string
		want      string
	}{
		{"missing certificate", filepath.Join(dir, "absent.pem"), good.keyFile, "", "tls_cert_file"},
		{"key of another certificate", good.certFile, other.keyFile, "", "tls_cert_file"},
		{"missing ca_file", "", "", filepath.Join(dir, "absent.pem"), "load_balancer.ca_file"},
		{"ca_file without a certificate", "", "", good.keyFile, "load_balancer.ca_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig(t, "http://127.0.0.1:1")
			if tt.cert != "" {
				cfg["tls_cert_file"], cfg["tls_key_file"] = tt.cert, tt.key
			}
			if tt.ca != "" {
				lbOf(cfg)["ca_file"] = tt.ca
			}
			err := run(t.Context(), []string{"-config", writeConfig(t, cfg), "-addr", "127.0.0.1:0"}, io.Discard)
			require.Error(t, err)
			assert.Equal(t, 2, exitCode(err))
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestHTTPSBackendVerifiedAgainstCAFile(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCert(t, dir, "backend")
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("secure " + r.URL.Path))
	}))
	backend.TLS = &tls.Config{Certificates: []tls.Certificate{ca.pair}}
	backend.StartTLS()
	t.Cleanup(backend.Close)
	require.True(t, strings.HasPrefix(backend.URL, "https://127.0.0.1:"))

	cfg := baseConfig(t, backend.URL)
	la := startLiveApp(t, cfg)
	key := opsCreate(t, la.hc, la.addr, map[string]any{"client_id": "https", "capacity": 1000, "rate_per_sec": 1000}).APIKey
	url := "http://" + la.addr + "/x"

	// Not in the system roots: neither probes nor requests get through.
	opsEventually(t, func() bool {
		code, _, err := opsDo(la.hc, http.MethodGet, url, key, nil)
		return err == nil && code >= 500
	}, "an unverified backend to be refused")

	la.rewrite(t, func(cfg map[string]any) { lbOf(cfg)["ca_file"] = ca.certFile })
	require.NoError(t, la.reload(t))
	opsEventually(t, func() bool {
		code, body, err := opsDo(la.hc, http.MethodGet, url, key, nil)
		return err == nil && code == http.StatusOK && string(body) == "secure /x"
	}, "the backend verified against ca_file")
}
