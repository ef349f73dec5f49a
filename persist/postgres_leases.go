package persist

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate/tollgate/messages"
)

// LeaseStore is a store whose buckets several instances share through
// leases (SPEC 9): the row is the bucket, and each instance renews its
// leases in batches. Only PostgreSQL is one.
type LeaseStore interface {
	// RenewLeases applies holder's renewals in one statement and returns
	// one grant per client that still exists, in client_id order. Leases
	// kept are valid for ttl from the moment the server applies them.
	// An error means nothing is known about what was applied: the holder
	// must count what it reported as handed back and what it asked for as
	// never granted, which loses tokens but never mints any.
	RenewLeases(ctx context.Context, holder string, ttl time.Duration, rs []messages.LeaseRenewal) ([]messages.LeaseGrant, error)
	// SharedTokens returns, per client id that exists, its bucket's tokens
	// as of now: the row refilled on the server's clock (capped at
	// capacity minus the live leases) plus the live leases' unspent
	// tokens as last reported.
	SharedTokens(ctx context.Context, ids []string) (map[string]float64, error)
}

var _ LeaseStore = (*Postgres)(nil)

// RenewLeases implements LeaseStore with tollgate_renew_leases
// (migrations/00010_leases.sql, 00011_scheduled_leases.sql): one round
// trip for the whole batch. The batch's horizon for tokens scheduled ahead
// is the longest of its renewals'.
// Renewals with unstorable client ids name no client and are skipped; two
// renewals of one client in a batch keep the last.
func (p *Postgres) RenewLeases(ctx context.Context, holder string, ttl time.Duration, rs []messages.LeaseRenewal) ([]messages.LeaseGrant, error) {
	rs = latestRenewals(rs)
	if len(rs) == 0 {
		return nil, nil
	}
	ids := make([]string, len(rs))
	seqs := make([]int64, len(rs))
	outs := make([]float64, len(rs))
	backs := make([]float64, len(rs))
	wants := make([]float64, len(rs))
	debts := make([]float64, len(rs))
	aheads := make([]float64, len(rs))
	var ahead time.Duration
	for i, r := range rs {
		ids[i], seqs[i], outs[i], backs[i], wants[i], debts[i] = r.ClientID, r.Seq, r.Outstanding, r.Handback, r.Want, r.Debt
		aheads[i], ahead = r.WantAhead, max(ahead, r.Ahead)
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	rows, _ := p.pool.Query(ctx, `SELECT id, applied, granted, row_tokens, leased,
			holders, rate, cap, key_hash, version, next_token, scheduled, first_due
		FROM tollgate_renew_leases($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		holder, ttl.Seconds(), ids, seqs, outs, backs, wants, debts, ahead.Seconds(), aheads)
	defer rows.Close()
	grants := make([]messages.LeaseGrant, 0, len(rs))
	var (
		g     messages.LeaseGrant
		hash  []byte
		next  float64
		first float64
	)
	for rows.Next() {
		if err := rows.Scan(&g.ClientID, &g.Applied, &g.Granted, &g.RowTokens, &g.Leased,
			&g.Holders, &g.RatePerSec, &g.Capacity, &hash, &g.Version, &next, &g.Scheduled, &first); err != nil {
			return nil, p.wrap("renew leases", err)
		}
		if len(hash) != len(g.KeyHash) {
			return nil, p.wrap("renew leases", fmt.Errorf("client %q: key hash has %d bytes", g.ClientID, len(hash)))
		}
		copy(g.KeyHash[:], hash)
		g.NextToken = time.Duration(next * float64(time.Second))
		g.FirstDue = time.Duration(first * float64(time.Second))
		grants = append(grants, g)
	}
	if err := rows.Err(); err != nil {
		return nil, p.wrap(fmt.Sprintf("renew %d leases", len(rs)), err)
	}
	return grants, nil
}

// SharedTokens implements LeaseStore in one read; it changes nothing. A
// row below zero by tokens scheduled ahead counts against the leases that
// hold them: they are not refilled yet.
func (p *Postgres) SharedTokens(ctx context.Context, ids []string) (map[string]float64, error) {
	out := make(map[string]float64, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	rows, _ := p.pool.Query(ctx, `SELECT c.client_id,
			GREATEST(LEAST(c.tokens + c.rate_per_sec *
				GREATEST(extract(epoch FROM clock_timestamp() - c.last_refill), 0),
				c.capacity - l.leased) + l.leased, 0)
		FROM clients c
		CROSS JOIN LATERAL (SELECT COALESCE(sum(tokens), 0) AS leased FROM client_leases
			WHERE client_id = c.client_id AND expires_at > clock_timestamp()) l
		WHERE c.client_id = ANY($1)`, ids)
	var (
		id     string
		tokens float64
	)
	_, err := pgx.ForEachRow(rows, []any{&id, &tokens}, func() error {
		out[id] = tokens
		return nil
	})
	if err != nil {
		return nil, p.wrap(fmt.Sprintf("shared tokens of %d clients", len(ids)), err)
	}
	return out, nil
}

// latestRenewals keeps the last renewal per client and drops unstorable
// ids, as latestStates does for saves.
func latestRenewals(rs []messages.LeaseRenewal) []messages.LeaseRenewal {
	seen := make(map[string]int, len(rs))
	out := make([]messages.LeaseRenewal, 0, len(rs))
	for _, r := range rs {
		if !storable(r.ClientID) {
			continue
		}
		if i, ok := seen[r.ClientID]; ok {
			out[i] = r
			continue
		}
		seen[r.ClientID] = len(out)
		out = append(out, r)
	}
	return out
}
