package persist_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
	"github.com/tollgate/tollgate/persist/pgtest"
)

// leaseDB is a store on a database of its own, with a direct connection
// to look at the rows.
type leaseDB struct {
	store *persist.Postgres
	conn  *pgx.Conn
}

func newLeaseDB(t *testing.T) *leaseDB {
	t.Helper()
	dsn := pgtest.New(t)
	s, err := persist.OpenPostgres(context.Background(), dsn, discard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return &leaseDB{store: s, conn: conn}
}

// client creates a client whose refill is negligible during a test, so
// grants are exact.
func (db *leaseDB) client(t *testing.T, id string, capacity int64, rate float64) {
	t.Helper()
	c := newClient(id)
	c.Capacity, c.Tokens, c.RatePerSec = capacity, float64(capacity), rate
	c.LastRefill = time.Now()
	require.NoError(t, db.store.CreateClient(context.Background(), c))
}

func (db *leaseDB) renew(t *testing.T, holder string, ttl time.Duration, rs ...messages.LeaseRenewal) map[string]messages.LeaseGrant {
	t.Helper()
	gs, err := db.store.RenewLeases(context.Background(), holder, ttl, rs)
	require.NoError(t, err)
	out := make(map[string]messages.LeaseGrant, len(gs))
	for _, g := range gs {
		out[g.ClientID] = g
	}
	return out
}

// total is the row's tokens plus every live lease of id.
func (db *leaseDB) total(t *testing.T, id string) (row, leased float64) {
	t.Helper()
	err := db.conn.QueryRow(context.Background(), `SELECT c.tokens,
		COALESCE((SELECT sum(tokens) FROM client_leases l
			WHERE l.client_id = c.client_id AND l.expires_at > clock_timestamp()), 0)
		FROM clients c WHERE c.client_id = $1`, id).Scan(&row, &leased)
	require.NoError(t, err)
	return row, leased
}

const slowRate = 0.001 // tokens per second: nothing refills during a test

func TestRenewLeasesGrants(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 20, slowRate)
	db.client(t, "b", 5, slowRate)

	gs := db.renew(t, "h1", 5*time.Second,
		messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 8},
		messages.LeaseRenewal{ClientID: "b", Seq: 1, Want: 8},
		messages.LeaseRenewal{ClientID: "gone", Seq: 1, Want: 8})
	require.Len(t, gs, 2, "a client that does not exist gets no grant")
	a, b := gs["a"], gs["b"]
	assert.True(t, a.Applied)
	assert.Equal(t, 8.0, a.Granted)
	assert.InDelta(t, 12, a.RowTokens, 0.01)
	assert.Equal(t, 8.0, a.Leased)
	assert.Equal(t, 1, a.Holders)
	assert.Equal(t, int64(20), a.Capacity)
	assert.Equal(t, newClient("a").KeyHash, a.KeyHash)
	assert.NotZero(t, a.Version)
	assert.Equal(t, 5.0, b.Granted, "never more than the row holds")
	assert.InDelta(t, 0, b.RowTokens, 0.01)

	// Spent 3 of 8, asks for 4 more: the lease is now 5 + 4.
	gs = db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 5, Want: 4})
	assert.Equal(t, 4.0, gs["a"].Granted)
	assert.Equal(t, 9.0, gs["a"].Leased)
	row, leased := db.total(t, "a")
	assert.InDelta(t, 8, row, 0.01)
	assert.Equal(t, 9.0, leased)
}

func TestSharedTokensCountsRowAndLeases(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 20, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 8})
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 5})
	got, err := db.store.SharedTokens(context.Background(), []string{"a", "gone"})
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.InDelta(t, 12+5, got["a"], 0.01, "row plus the lease as last reported")
}

func TestRenewLeasesDenyReturnsNextToken(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 2, 4)
	gs := db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 2})
	require.Equal(t, 2.0, gs["a"].Granted)
	gs = db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 0, Want: 1})
	g := gs["a"]
	require.True(t, g.Applied)
	if g.Granted == 0 { // unless a quarter second passed in between
		assert.Positive(t, g.NextToken)
		assert.LessOrEqual(t, g.NextToken, 250*time.Millisecond)
	}
}

// TestRenewLeasesSchedulesTheNextTokens: a holder that takes every token
// the row has and wants more is granted the next tokens the row refills
// within Ahead, no more than WantAhead, due one by one from FirstDue; the
// row goes below zero by them, so another holder gets nothing before
// they are refilled, and row plus leases stays within capacity.
func TestRenewLeasesSchedulesTheNextTokens(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 10, 40)
	db.client(t, "b", 10, 40)
	ahead := 250 * time.Millisecond
	gs := db.renew(t, "h1", 5*time.Second,
		messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 30, Ahead: ahead, WantAhead: 30},
		messages.LeaseRenewal{ClientID: "b", Seq: 1, Want: 30, Ahead: ahead, WantAhead: 12})
	a := gs["a"]
	require.True(t, a.Applied)
	assert.Equal(t, 10.0, a.Scheduled, "a quarter second of refill at 40/s")
	assert.Equal(t, 20.0, a.Granted, "the row's 10 and the 10 scheduled")
	assert.Positive(t, a.FirstDue)
	assert.LessOrEqual(t, a.FirstDue, 25*time.Millisecond, "the first is the row's next token")
	assert.Zero(t, a.NextToken, "something was granted")
	assert.Equal(t, 2.0, gs["b"].Scheduled, "no more than WantAhead in all")
	row, leased := db.total(t, "a")
	assert.InDelta(t, -10, row, 1, "the row owes the scheduled tokens")
	assert.LessOrEqual(t, row+leased, 10.0+1e-9)
	shared, err := db.store.SharedTokens(context.Background(), []string{"a"})
	require.NoError(t, err)
	assert.InDelta(t, 10, shared["a"], 2, "tokens counts the row and the leases, scheduled ones included")

	// Another holder finds nothing before the scheduled tokens are refilled.
	gs = db.renew(t, "h2", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 5, Ahead: ahead, WantAhead: 5})
	g := gs["a"]
	require.True(t, g.Applied)
	assert.Zero(t, g.Granted)
	assert.Zero(t, g.Scheduled)
	assert.Greater(t, g.NextToken, 200*time.Millisecond, "after h1's ten")
}

// TestRenewLeasesScheduledLeaseKeepsItsTokens: a lease holding tokens
// scheduled ahead is larger than capacity, the row owing them; renewing it
// does not cut it to capacity as a lowered capacity would (the tokens the
// row went below zero for would be lost). A bucket too small to hold a
// horizon of refill schedules nothing: its holder learns the next token.
func TestRenewLeasesScheduledLeaseKeepsItsTokens(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 10, 40)
	db.client(t, "small", 5, 40)
	ahead := 250 * time.Millisecond
	gs := db.renew(t, "h1", 5*time.Second,
		messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 30, Ahead: ahead, WantAhead: 30},
		messages.LeaseRenewal{ClientID: "small", Seq: 1, Want: 30, Ahead: ahead, WantAhead: 30})
	require.Equal(t, 20.0, gs["a"].Granted, "10 now and 10 scheduled")
	assert.Zero(t, gs["small"].Scheduled, "5 tokens cannot hold a quarter second at 40/s")
	gs = db.renew(t, "h1", 5*time.Second,
		messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 20, Want: 30, Ahead: ahead, WantAhead: 30},
		messages.LeaseRenewal{ClientID: "small", Seq: 2, Outstanding: 5, Want: 30, Ahead: ahead, WantAhead: 30})
	assert.GreaterOrEqual(t, gs["a"].Granted, 0.0, "the lease of 20 is not cut to capacity")
	row, leased := db.total(t, "a")
	assert.InDelta(t, 10, row+leased, 1, "row and leases hold the capacity, nothing lost")
	assert.Positive(t, gs["small"].NextToken)
}

func TestRenewLeasesHandbackAndRelease(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 10, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 6})
	// Spent 2 of 6, hands the other 4 back and wants nothing: the lease goes.
	gs := db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 0, Handback: 4})
	assert.Equal(t, 0.0, gs["a"].Granted)
	assert.Equal(t, 0, gs["a"].Holders)
	row, leased := db.total(t, "a")
	assert.InDelta(t, 8, row, 0.01)
	assert.Zero(t, leased)
}

func TestRenewLeasesReportOnlyLowers(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 10, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 3})
	// A holder claiming more than it was leased, or handing back more,
	// mints nothing.
	gs := db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 50, Handback: 50})
	assert.Equal(t, 3.0-50, gs["a"].Granted)
	row, leased := db.total(t, "a")
	assert.LessOrEqual(t, row+leased, 10.0+0.01)
}

func TestRenewLeasesStaleSeqAppliesNothing(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 10, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 5, Want: 2})
	gs := db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 4, Outstanding: 0, Handback: 2, Want: 8})
	assert.False(t, gs["a"].Applied)
	assert.Zero(t, gs["a"].Granted)
	row, leased := db.total(t, "a")
	assert.InDelta(t, 8, row, 0.01)
	assert.Equal(t, 2.0, leased)
}

func TestRenewLeasesFairSplitWhenScarce(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 10, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 1})
	db.renew(t, "h2", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 1})
	// 8 left, three live holders: a greedy one gets its share, not all.
	gs := db.renew(t, "h3", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 100})
	assert.Equal(t, 2.0, gs["a"].Granted, "floor(8 / 3)")
	assert.Equal(t, 3, gs["a"].Holders)
	// The last token is never held back by the split.
	db.client(t, "b", 1, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "b", Seq: 2, Want: 0})
	db.renew(t, "h2", 5*time.Second, messages.LeaseRenewal{ClientID: "b", Seq: 2, Want: 0.5})
	gs = db.renew(t, "h3", 5*time.Second, messages.LeaseRenewal{ClientID: "b", Seq: 2, Want: 5})
	assert.Equal(t, 1.0, gs["b"].Granted)
}

func TestRenewLeasesExpiredLeaseFreesTheCap(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 10, 1000) // refills at once: only the cap holds it
	gs := db.renew(t, "dead", 200*time.Millisecond, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 10})
	require.Equal(t, 10.0, gs["a"].Granted)
	gs = db.renew(t, "h2", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 10})
	require.Zero(t, gs["a"].Granted, "the dead holder's lease still caps the row")
	require.Eventually(t, func() bool {
		gs := db.renew(t, "h2", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: time.Now().UnixNano(), Want: 10})
		return gs["a"].Granted == 10
	}, 5*time.Second, 20*time.Millisecond)
	// The dead holder coming back finds its lease gone: what it claims
	// to hold is taken away.
	gs = db.renew(t, "dead", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 10, Want: 1})
	assert.Equal(t, -10.0, gs["a"].Granted)
}

func TestRenewLeasesCapacityLoweredShrinksLeases(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 20, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 10})
	db.renew(t, "h2", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 10})
	capacity := int64(4)
	_, err := db.store.UpdateLimits(context.Background(), "a", messages.Limits{Capacity: &capacity})
	require.NoError(t, err)
	g1 := db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 10})["a"]
	assert.Equal(t, int64(4), g1.Capacity)
	assert.Equal(t, -8.0, g1.Granted, "shrinks to its half of 4")
	g2 := db.renew(t, "h2", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 10})["a"]
	assert.Equal(t, -8.0, g2.Granted, "shrinks to what h1 left")
	row, leased := db.total(t, "a")
	assert.LessOrEqual(t, row+leased, 4.0+0.01)
}

func TestRenewLeasesDebt(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 10, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 4})
	// Back from an outage: held nothing any more (handed back 4), admitted
	// 12 on its own. The row pays, below zero.
	gs := db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Handback: 4, Debt: 12, Want: 1})
	assert.Zero(t, gs["a"].Granted)
	assert.InDelta(t, -2, gs["a"].RowTokens, 0.01)
	assert.Positive(t, gs["a"].NextToken)
	row, leased := db.total(t, "a")
	assert.LessOrEqual(t, row+leased, 10.0)
	// A debt is never forgiven by a lowered floor: refill pays it.
	gs = db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 3, Debt: 1})
	assert.InDelta(t, -3, gs["a"].RowTokens, 0.01)
}

func TestRenewLeasesDeletedClient(t *testing.T) {
	db := newLeaseDB(t)
	db.client(t, "a", 20, slowRate)
	db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 1, Want: 10})
	_, err := db.store.DeleteClient(context.Background(), "a")
	require.NoError(t, err, "leases go with their client")
	assert.Empty(t, db.renew(t, "h1", 5*time.Second, messages.LeaseRenewal{ClientID: "a", Seq: 2, Outstanding: 10}))
}

// TestRenewLeasesConcurrentHoldersKeepTheInvariant has holders renew
// overlapping sets of clients at once, in random order, spending at random:
// no deadlock, and row plus leases never exceed capacity.
func TestRenewLeasesConcurrentHoldersKeepTheInvariant(t *testing.T) {
	db := newLeaseDB(t)
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = fmt.Sprintf("c%d", i)
		db.client(t, ids[i], 10, 50)
	}
	var mu sync.Mutex
	spent := map[string]float64{}
	var g errgroup.Group
	for h := range 4 {
		g.Go(func() error {
			held := map[string]float64{}
			rnd := rand.New(rand.NewPCG(uint64(h), 1))
			for seq := int64(1); seq <= 40; seq++ {
				var rs []messages.LeaseRenewal
				for _, i := range rnd.Perm(len(ids))[:4] {
					id := ids[i]
					use := float64(rnd.IntN(int(held[id]) + 1))
					held[id] -= use
					mu.Lock()
					spent[id] += use
					mu.Unlock()
					rs = append(rs, messages.LeaseRenewal{ClientID: id, Seq: seq, Outstanding: held[id], Want: float64(rnd.IntN(6))})
				}
				gs, err := db.store.RenewLeases(context.Background(), fmt.Sprint("h", h), 5*time.Second, rs)
				if err != nil {
					return err
				}
				for _, gr := range gs {
					held[gr.ClientID] = max(0, held[gr.ClientID]+gr.Granted)
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	for _, id := range ids {
		row, leased := db.total(t, id)
		assert.LessOrEqual(t, row+leased, 10.0+1e-9, id)
		assert.GreaterOrEqual(t, row, 0.0, id)
	}
}
