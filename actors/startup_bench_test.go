package actors

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
	"github.com/tollgate/tollgate/persist/pgtest"
)

const startupClients = 100_000

func seed(b *testing.B, s persist.Store) {
	b.Helper()
	cs := make([]messages.Client, startupClients)
	now := time.Now()
	for i := range cs {
		key := fmt.Sprintf("startup-key-%07d-0123456789", i)
		cs[i] = newClient(fmt.Sprintf("client-%07d", i), key, 5, 20, now)
	}
	if err := s.(persist.BulkCreator).CreateClients(context.Background(), cs); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStartup measures what start-up costs per stored client count:
// reading every key hash and building the key index (SPEC 8: 1e5 clients).
func BenchmarkStartup(b *testing.B) {
	stores := map[string]func(b *testing.B) persist.Store{
		"embedded": func(b *testing.B) persist.Store {
			s, err := persist.OpenBolt(filepath.Join(b.TempDir(), "state.db"), discard)
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
		"postgres": func(b *testing.B) persist.Store {
			s, err := persist.OpenPostgres(context.Background(), pgtest.New(b), discard)
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
	}
	for _, name := range []string{"embedded", "postgres"} {
		b.Run(fmt.Sprintf("%s/clients=%d", name, startupClients), func(b *testing.B) {
			s := stores[name](b)
			defer s.Close()
			seed(b, s)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NewLimiter(context.Background(), LimiterConfig{}, s, discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
