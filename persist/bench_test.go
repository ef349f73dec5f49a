package persist_test

import (
	"context"
	"testing"
	"time"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// BenchmarkSaveStates10k measures one batch save of 10,000 bucket states,
// what the persistence actor writes each save_state_interval at that
// many changed clients. It chose the clients table's fillfactor (issue
// 11): with 50, 110-220 ms per batch; with 80, 370-440 ms (most updates
// no longer fit their page, so they are not HOT); with 100, 300-460 ms
// (2 cores, PostgreSQL 15, under -race and other load).
func BenchmarkSaveStates10k(b *testing.B) {
	stores := []struct {
		name    string
		storage func(testing.TB) func(testing.TB) persist.Store
	}{
		{"bolt", boltStorage},
		{"postgres", postgresStorage},
	}
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			s := st.storage(b)(b)
			cs := seed(b, s, "b", 10_000)
			states := make([]messages.BucketState, len(cs))
			for i, c := range cs {
				states[i].ClientID = c.ID
			}
			ctx := context.Background()
			b.ReportAllocs()
			round := 0
			for b.Loop() {
				round++
				for i := range states {
					states[i].Tokens = float64((round + i) % 20)
					states[i].LastRefill = epoch.Add(time.Duration(round) * time.Second)
				}
				if err := s.SaveStates(ctx, states); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
