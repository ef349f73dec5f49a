package pipeline

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReplayFill(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		size    int64 // -1: unknown
		limit   int64
		want    string
		partial bool // only the first part was read
		wantErr error
	}{
		{name: "known size", body: "hello", size: 5, limit: 10, want: "hello"},
		{name: "unknown size under limit", body: "hello", size: -1, limit: 10, want: "hello"},
		{name: "unknown size at limit", body: "0123456789", size: -1, limit: 10, want: "0123456789"},
		{name: "unknown size over limit reads one byte past", body: "0123456789ab", size: -1, limit: 10, want: "0123456789a",
			partial: true},
		{name: "empty", body: "", size: -1, limit: 10, want: ""},
		{name: "short body", body: "hel", size: 5, limit: 10, want: "hel", wantErr: io.ErrUnexpectedEOF},
		{name: "larger than one growth step", body: strings.Repeat("x", 10000), size: -1, limit: 20000,
			want: strings.Repeat("x", 10000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			budget := &bufferBudget{limit: 1 << 20}
			r := newReplay(budget)
			complete, err := r.fill(strings.NewReader(tt.body), tt.size, tt.limit)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				r.release()
				assert.Zero(t, budget.used.Load(), "the budget is given back")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, !tt.partial, complete)
			assert.Equal(t, tt.want, string(r.buf))
			r.release()
			assert.Zero(t, budget.used.Load(), "the budget is given back")
		})
	}
}

func TestReplayReadersShareOneBuffer(t *testing.T) {
	r := newReplay(&bufferBudget{limit: 1 << 20})
	_, err := r.fill(strings.NewReader("payload"), -1, 100)
	require.NoError(t, err)
	a, b := r.open(), r.open()
	r.release() // the loop is done; the readers keep the buffer
	for _, rr := range []*replayReader{a, b} {
		got, err := io.ReadAll(rr)
		require.NoError(t, err)
		assert.Equal(t, "payload", string(got))
	}
	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "closing twice releases once")
	assert.EqualValues(t, 1, r.refs.Load())
	require.NoError(t, b.Close())
	assert.Zero(t, r.refs.Load())
	_, err = b.Read(make([]byte, 1))
	assert.ErrorIs(t, err, http.ErrBodyReadAfterClose, "no read once the buffer may be reused")
}

func TestHoldAnswer(t *testing.T) {
	t.Run("small answer is held", func(t *testing.T) {
		body := &closeCounter{Reader: strings.NewReader("busy")}
		res := &http.Response{Body: body, ContentLength: -1}
		require.NoError(t, holdAnswer(res))
		assert.Equal(t, 1, body.closed, "the attempt ends")
		got, _ := io.ReadAll(res.Body)
		assert.Equal(t, "busy", string(got))
	})
	t.Run("large answer is dropped", func(t *testing.T) {
		body := &closeCounter{Reader: bytes.NewReader(bytes.Repeat([]byte("z"), maxHeldAnswer+10))}
		res := &http.Response{Body: body, ContentLength: -1}
		require.ErrorIs(t, holdAnswer(res), errAnswerTooLarge)
		assert.Equal(t, 1, body.closed)
	})
	t.Run("declared large answer is dropped unread", func(t *testing.T) {
		body := &closeCounter{Reader: strings.NewReader("x")}
		res := &http.Response{Body: body, ContentLength: maxHeldAnswer + 1}
		require.ErrorIs(t, holdAnswer(res), errAnswerTooLarge)
		assert.Equal(t, 1, body.closed)
	})
	t.Run("broken answer is an error", func(t *testing.T) {
		boom := errors.New("boom")
		body := &closeCounter{Reader: io.MultiReader(strings.NewReader("x"), errReader{boom})}
		res := &http.Response{Body: body, ContentLength: -1}
		require.ErrorIs(t, holdAnswer(res), boom)
		assert.Equal(t, 1, body.closed)
	})
}

type closeCounter struct {
	io.Reader
	closed int
}

func (c *closeCounter) Close() error {
	c.closed++
	return nil
}

func TestCopyBuffers(t *testing.T) {
	var c copyBuffers
	b := c.Get()
	assert.Len(t, b, copyBufferSize)
	c.Put(b)
	c.Put(make([]byte, 10)) // a foreign buffer is dropped
	assert.Len(t, c.Get(), copyBufferSize)
}

// Pooled exchanges and body buffers must never mix two requests up.
func TestConcurrentBodiesAreNotMixedUp(t *testing.T) {
	bad := newBackend(t, hashing(http.StatusServiceUnavailable))
	ok := newBackend(t, hashing(http.StatusOK))
	h := newHarness(t, setup{backends: []string{bad.URL, ok.URL}, opts: Options{MaxRetries: 1}})
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			for j := range 10 {
				body := strings.Repeat(string(rune('a'+(i+j)%26)), 100+i*50+j)
				req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, h.url, strings.NewReader(body))
				if !assert.NoError(t, err) {
					return
				}
				req.Header.Set("Authorization", testKey)
				res, err := h.client.Do(req)
				if !assert.NoError(t, err) {
					return
				}
				got, err := io.ReadAll(res.Body)
				res.Body.Close()
				assert.NoError(t, err)
				assert.Equal(t, http.StatusOK, res.StatusCode)
				assert.Equal(t, sha256Hex([]byte(body)), string(got))
			}
		})
	}
	wg.Wait()
}
