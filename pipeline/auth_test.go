package pipeline

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseAuthorization(t *testing.T) {
	long := strings.Repeat("k", maxAuthorization)
	tests := []struct {
		name string
		in   string
		key  string
		ok   bool
	}{
		{name: "bare key", in: "abc123", key: "abc123", ok: true},
		{name: "bearer", in: "Bearer abc123", key: "abc123", ok: true},
		{name: "bearer lower case", in: "bearer abc123", key: "abc123", ok: true},
		{name: "bearer mixed case", in: "BeArEr abc123", key: "abc123", ok: true},
		{name: "bearer two spaces", in: "Bearer  abc123", key: "abc123", ok: true},
		{name: "key starting with Bearer", in: "Bearerabc123", key: "Bearerabc123", ok: true},
		{name: "printable punctuation", in: "Bearer a-b_c.d~e+f/g=", key: "a-b_c.d~e+f/g=", ok: true},
		{name: "longest value", in: long, key: long, ok: true},
		{name: "empty", in: ""},
		{name: "bearer alone", in: "Bearer"},
		{name: "bearer and spaces", in: "Bearer   "},
		{name: "other scheme", in: "Basic dXNlcjpwYXNz"},
		{name: "two words", in: "Bearer abc def"},
		{name: "trailing space", in: "abc "},
		{name: "tab", in: "Bearer\tabc"},
		{name: "control char", in: "Bearer abc\x01"},
		{name: "newline", in: "abc\ndef"},
		{name: "DEL", in: "abc\x7f"},
		{name: "non-ASCII", in: "Bearer clé"},
		{name: "too long", in: long + "k"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, ok := parseAuthorization(tt.in)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.key, key)
		})
	}
}

func FuzzParseAuthorization(f *testing.F) {
	for _, s := range []string{"", "abc", "Bearer abc", "bearer  abc", "Bearer", "Basic x y", "a\x00b", "Bearer clé"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		key, ok := parseAuthorization(h)
		if !ok {
			if key != "" {
				t.Fatalf("refused %q but returned key %q", h, key)
			}
			return
		}
		if key == "" || len(h) > maxAuthorization || !strings.HasSuffix(h, key) {
			t.Fatalf("parseAuthorization(%q) = %q", h, key)
		}
		for i := 0; i < len(key); i++ {
			if key[i] <= ' ' || key[i] >= 0x7f {
				t.Fatalf("key %q of %q has byte %#x", key, h, key[i])
			}
		}
		// A valid key is found again in both accepted forms.
		if len("Bearer "+key) <= maxAuthorization {
			if got, ok := parseAuthorization("Bearer " + key); !ok || got != key {
				t.Fatalf("Bearer form of %q gave %q, %v", key, got, ok)
			}
		}
	})
}

func TestSaneRequestID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"abc-123", true},
		{"A.b_c:d-9", true},
		{strings.Repeat("a", maxRequestID), true},
		{"", false},
		{strings.Repeat("a", maxRequestID+1), false},
		{"has space", false},
		{"quote\"", false},
		{"new\nline", false},
		{"ünï", false},
		{"a/b", false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			assert.Equal(t, tt.want, saneRequestID(tt.id))
		})
	}
}

func TestIDSourceMakesSaneUniqueIDs(t *testing.T) {
	var s idSource
	s.init()
	seen := make(map[string]bool)
	for range 1000 {
		id := s.next()
		assert.True(t, saneRequestID(id), id)
		assert.False(t, seen[id], "duplicate %s", id)
		seen[id] = true
	}
	assert.Len(t, string(s.prefix[:]), 16)
}
