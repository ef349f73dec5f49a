package main

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// setReadHeaderTimeout shortens the servers' header deadline for one test.
// Tests that start instances cannot run in parallel (start uses Setenv),
// so the package variable is safe to change.
func setReadHeaderTimeout(t *testing.T, d time.Duration) {
	t.Helper()
	old := readHeaderTimeout
	readHeaderTimeout = d
	t.Cleanup(func() { readHeaderTimeout = old })
}

// dribble sends the start of a request one byte at a time, every gap,
// never finishing the headers, and returns how long the server kept the
// connection open and what it answered, if anything. It gives up after
// limit, reporting the connection as open that long.
func dribble(addr, key string, gap, limit time.Duration) (open time.Duration, reply string, err error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	began := time.Now()
	closed := make(chan string, 1)
	go func() { // ends when the connection closes, by either side
		var got strings.Builder
		_, _ = io.Copy(&got, conn)
		closed <- got.String()
	}()
	head := "GET /slow HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + key + "\r\nX-Pad: "
	deadline := began.Add(limit)
	for i := 0; time.Now().Before(deadline); i++ {
		b := byte('a')
		if i < len(head) {
			b = head[i]
		}
		if _, err := conn.Write([]byte{b}); err != nil {
			break // the server hung up while we wrote
		}
		select {
		case got := <-closed:
			return time.Since(began), got, nil
		case <-time.After(gap):
		}
	}
	conn.Close()
	got := <-closed
	return time.Since(began), got, nil
}

// TestHostileSlowHeadersAreCutOff: clients dribbling their headers a byte
// at a time (slowloris) are disconnected by ReadHeaderTimeout though they
// keep sending, and never served, while other clients are.
func TestHostileSlowHeadersAreCutOff(t *testing.T) {
	const timeout = time.Second
	setReadHeaderTimeout(t, timeout)
	rec := newRecorder(t)
	in := start(t, baseConfig(t, rec.url))
	key := createKey(t, in.addr, "", "slow")

	const slow = 50
	type result struct {
		open  time.Duration
		reply string
		err   error
	}
	results := make(chan result, slow)
	var wg sync.WaitGroup
	for range slow {
		wg.Go(func() {
			open, reply, err := dribble(in.addr, key, 50*time.Millisecond, 10*timeout)
			results <- result{open, reply, err}
		})
	}
	// Others are served meanwhile, including a client that sends its
	// headers slowly but within the timeout.
	for range 20 {
		code, body := call(t, http.MethodGet, "http://"+in.addr+"/fast", key, "")
		require.Equal(t, http.StatusOK, code, body)
	}
	conn, err := net.Dial("tcp", in.addr)
	require.NoError(t, err)
	for _, part := range []string{"GET /patient HTTP/1.1\r\n", "Host: a\r\nAuthorization: Bearer " + key + "\r\n", "\r\n"} {
		_, err := io.WriteString(conn, part)
		require.NoError(t, err)
		time.Sleep(timeout / 10) // paced sending is the behaviour under test
	}
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 12)
	_, err = io.ReadFull(conn, buf)
	require.NoError(t, err)
	assert.Equal(t, "HTTP/1.1 200", string(buf), "headers completed within the timeout are served")
	conn.Close()

	wg.Wait()
	close(results)
	var longest time.Duration
	for r := range results {
		require.NoError(t, r.err)
		// net/http hangs up silently, or answers 400 when the deadline
		// cuts a header line in two.
		if r.reply != "" {
			assert.True(t, strings.HasPrefix(r.reply, "HTTP/1.1 400 "), "%.100q", r.reply)
		}
		assert.Less(t, r.open, 10*timeout, "the slow client was never cut off")
		longest = max(longest, r.open)
	}
	t.Logf("%d slow clients cut off after at most %v (ReadHeaderTimeout %v)", slow, longest, timeout)
	for _, p := range rec.paths() {
		assert.NotEqual(t, "/slow", p, "a dribbled request reached the backend")
	}
}

// TestHostileHeaders: oversized headers get 431; huge, control-character
// and non-ASCII Authorization values are refused with a 4xx, never a 5xx,
// and never reach the backend. net/http itself answers 400 for values with
// control characters other than tab (RFC 9110 5.5), before any handler;
// everything it lets through is the pipeline's JSON 401.
func TestHostileHeaders(t *testing.T) {
	rec := newRecorder(t)
	in := start(t, baseConfig(t, rec.url))
	key := createKey(t, in.addr, "", "headers")
	get := func(headers string) string {
		return crlf("GET /h HTTP/1.1\nHost: a\n" + headers + "\n")
	}
	tests := []struct {
		name string
		raw  string
		want int
		json bool // the answer is a JSON error body
	}{
		{"one 80 KiB header", get("X-Big: " + strings.Repeat("b", 80<<10) + "\n"), 431, false},
		{"1000 headers of 100 bytes", get(strings.Repeat("X-A: "+strings.Repeat("v", 100)+"\n", 1000)), 431, false},
		{"80 KiB Authorization", get("Authorization: Bearer " + strings.Repeat("k", 80<<10) + "\n"), 431, false},
		{"60 KiB Authorization", get("Authorization: Bearer " + strings.Repeat("k", 60<<10) + "\n"), 401, true},
		{"513-byte Authorization", get("Authorization: " + strings.Repeat("k", 513) + "\n"), 401, true},
		{"real key behind 600 spaces", get("Authorization: Bearer" + strings.Repeat(" ", 600) + key + "\n"), 401, true},
		{"tab inside the key", get("Authorization: Bearer a\tb\n"), 401, true},
		{"tab after the scheme", get("Authorization: Bearer\t" + key + "\n"), 401, true},
		{"UTF-8 key", get("Authorization: Bearer clé-ключ-鍵\n"), 401, true},
		{"Latin-1 byte", get("Authorization: Bearer cl\xe9\n"), 401, true},
		{"invalid UTF-8", get("Authorization: \xff\xfe\xfd\n"), 401, true},
		{"real key with a non-ASCII suffix", get("Authorization: Bearer " + key + "\xc2\xa0\n"), 401, true},
		{"two Authorization fields", get("Authorization: Bearer " + key + "\nAuthorization: Bearer " + key + "\n"), 401, true},
		{"empty Authorization", get("Authorization:\n"), 401, true},
		{"scheme only", get("Authorization: Bearer\n"), 401, true},
		{"Basic credentials", get("Authorization: Basic dXNlcjpwYXNz\n"), 401, true},
		{"NUL", get("Authorization: Bearer a\x00b\n"), 400, false},
		{"SOH", get("Authorization: Bearer a\x01b\n"), 400, false},
		{"bare CR", get("Authorization: Bearer a\rb\n"), 400, false},
		{"ESC sequence", get("Authorization: Bearer \x1b[31mred\n"), 400, false},
		{"DEL", get("Authorization: Bearer a\x7fb\n"), 400, false},
		{"space in a field name", get("Auth orization: x\n"), 400, false},
		{"no Host", crlf("GET /h HTTP/1.1\nAuthorization: Bearer " + key + "\n\n"), 400, false},
		{"two Hosts", get("Host: b\nAuthorization: Bearer " + key + "\n"), 400, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answers, _ := rawExchange(t, in.addr, tt.raw, 1, 0)
			require.Len(t, answers, 1)
			a := answers[0]
			assert.Equal(t, tt.want, a.status, "%.200s", a.body)
			assert.Less(t, a.status, 500)
			if tt.json {
				assert.Equal(t, tt.want, jsonCode(a.body), a.body)
			}
			if tt.want == http.StatusUnauthorized {
				assert.True(t, strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer"), a.header)
			}
		})
	}
	assert.Empty(t, rec.paths(), "no refused request reached the backend")

	// The process still serves the real key afterwards.
	code, body := call(t, http.MethodGet, "http://"+in.addr+"/after", key, "")
	assert.Equal(t, http.StatusOK, code, body)
}

// TestHostileRequestSmuggling sends framing that two HTTP parsers could
// read differently. Ambiguous lengths are refused (400, or 501 for
// transfer codings other than chunked, per RFC 9112 6.1), and the
// connection is closed. A request with both Content-Length and chunked
// Transfer-Encoding is read as chunked (net/http drops the length, as RFC
// 9112 6.3 allows) and the connection is closed after its answer, so a
// request hidden after the chunked body is never read; the backend gets
// the body re-framed with one Content-Length of its own.
func TestHostileRequestSmuggling(t *testing.T) {
	rec := newRecorder(t)
	in := start(t, baseConfig(t, rec.url))
	key := createKey(t, in.addr, "", "smuggler")
	post := func(headers, body string) string {
		return crlf("POST /s HTTP/1.1\nHost: a\nAuthorization: Bearer "+key+"\n"+headers+"\n") + body
	}
	hidden := crlf("GET /smuggled HTTP/1.1\nHost: a\nAuthorization: Bearer " + key + "\n\n")
	tests := []struct {
		name     string
		raw      string
		want     int
		body     string // what the backend gets, when the request is forwarded
		keepOpen bool
	}{
		{name: "CL.TE: Content-Length covers a hidden request",
			raw:  post("Content-Length: "+strconv.Itoa(5+len(hidden))+"\nTransfer-Encoding: chunked\n", "0\r\n\r\n"+hidden),
			want: 200, body: ""},
		{name: "TE.CL: a short Content-Length inside a chunked body",
			raw:  post("Transfer-Encoding: chunked\nContent-Length: 3\n", "5\r\nhello\r\n0\r\n\r\n"+hidden),
			want: 200, body: "hello"},
		{name: "Content-Length twice, different",
			raw: post("Content-Length: 5\nContent-Length: 6\n", "hello!"), want: 400},
		{name: "Content-Length as a list",
			raw: post("Content-Length: 5, 5\n", "hello"), want: 400},
		{name: "Content-Length with a sign",
			raw: post("Content-Length: +5\n", "hello"), want: 400},
		{name: "negative Content-Length",
			raw: post("Content-Length: -1\n", ""), want: 400},
		{name: "Content-Length past int64",
			raw: post("Content-Length: 99999999999999999999\n", ""), want: 400},
		{name: "space before the colon",
			raw: post("Transfer-Encoding : chunked\n", "0\r\n\r\n"), want: 400},
		{name: "Transfer-Encoding twice",
			raw: post("Transfer-Encoding: chunked\nTransfer-Encoding: chunked\n", "0\r\n\r\n"), want: 501},
		{name: "gzip, chunked",
			raw: post("Transfer-Encoding: gzip, chunked\n", "0\r\n\r\n"), want: 501},
		{name: "xchunked",
			raw: post("Transfer-Encoding: xchunked\n", "0\r\n\r\n"), want: 501},
		{name: "identity with Content-Length",
			raw: post("Transfer-Encoding: identity\nContent-Length: 5\n", "hello"), want: 501},
		{name: "chunk size not hex",
			raw: post("Transfer-Encoding: chunked\n", "zz\r\nhello\r\n0\r\n\r\n"), want: 400},
		{name: "chunk size past int64",
			raw: post("Transfer-Encoding: chunked\n", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), want: 400},
		{name: "Content-Length twice, equal (merged, RFC 9110 8.6)",
			raw:  post("Content-Length: 5\nContent-Length: 5\n", "hello"),
			want: 200, body: "hello", keepOpen: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(rec.seen())
			answers, after := rawExchange(t, in.addr, tt.raw, 1, time.Second)
			require.Len(t, answers, 1)
			assert.Equal(t, tt.want, answers[0].status, "%.200s", answers[0].body)
			want := closedByServer
			if tt.keepOpen {
				want = stayedOpen
			}
			assert.Equal(t, want, after, "after the answer (1 open, 2 closed, 3 another answer)")
			seen := rec.seen()[before:]
			if tt.want != http.StatusOK {
				assert.Empty(t, seen, "a refused request reached the backend")
				return
			}
			require.Len(t, seen, 1)
			assert.Equal(t, tt.body, seen[0].body)
			assert.Equal(t, int64(len(tt.body)), seen[0].contentLength)
			assert.Empty(t, seen[0].transferEncoding)
		})
	}
	assert.NotContains(t, rec.paths(), "/smuggled")

	// Regression: a malformed chunk past max_retry_body_bytes, found while
	// the body streams to the backend, was taken for a connection failure:
	// 502, and the backend marked down, so a few broken uploads took every
	// backend out. It is the client's fault: 400, backend still healthy.
	t.Run("malformed chunk in a streamed body", func(t *testing.T) {
		big := strings.Repeat("x", 1536<<10)
		raw := post("Transfer-Encoding: chunked\n", strconv.FormatInt(int64(len(big)), 16)+"\r\n"+big+"\r\nzz\r\n")
		answers, after := rawExchange(t, in.addr, raw, 1, time.Second)
		require.Len(t, answers, 1)
		assert.Equal(t, http.StatusBadRequest, answers[0].status, answers[0].body)
		assert.Equal(t, http.StatusBadRequest, jsonCode(answers[0].body), answers[0].body)
		assert.Equal(t, closedByServer, after)
		code, body := call(t, http.MethodGet, "http://"+in.addr+"/backends", "", "")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, body, `"healthy":true`, "a client's bad body marked the backend down")
		code, body = call(t, http.MethodGet, "http://"+in.addr+"/after", key, "")
		assert.Equal(t, http.StatusOK, code, body)
	})
	t.Run("upload cut short of its Content-Length", func(t *testing.T) {
		conn, err := net.Dial("tcp", in.addr)
		require.NoError(t, err)
		defer conn.Close()
		_, err = io.WriteString(conn, post("Content-Length: "+strconv.Itoa(2<<20)+"\n", strings.Repeat("x", 1536<<10)))
		require.NoError(t, err)
		require.NoError(t, conn.(*net.TCPConn).CloseWrite())
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		// The half-close reads as a hang-up (499, logged nginx-style) or
		// as a short body (400), whichever net/http notices first.
		reply, _ := io.ReadAll(conn)
		if f := strings.Fields(string(reply)); len(reply) > 0 {
			require.Greater(t, len(f), 1, "%q", reply)
			assert.Contains(t, []string{"400", "499"}, f[1], "%.300s", reply)
		}
		code, body := call(t, http.MethodGet, "http://"+in.addr+"/backends", "", "")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, body, `"healthy":true`, "a client's short body marked the backend down")
	})
}
