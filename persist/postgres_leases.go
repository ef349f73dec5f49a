package persist

import (
	"context"
	"fmt"
	"time"

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
}

var _ LeaseStore = (*Postgres)(nil)

// RenewLeases implements LeaseStore with tollgate_renew_leases
// (migrations/00010_leases.sql): one round trip for the whole batch.
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
	for i, r := range rs {
		ids[i], seqs[i], outs[i], backs[i], wants[i] = r.ClientID, r.Seq, r.Outstanding, r.Handback, r.Want
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	rows, _ := p.pool.Query(ctx, `SELECT id, applied, granted, row_tokens, leased,
			holders, rate, cap, key_hash, version, next_token
		FROM tollgate_renew_leases($1, $2, $3, $4, $5, $6, $7)`,
		holder, ttl.Seconds(), ids, seqs, outs, backs, wants)
	defer rows.Close()
	grants := make([]messages.LeaseGrant, 0, len(rs))
	var (
		g    messages.LeaseGrant
		hash []byte
		next float64
	)
	for rows.Next() {
		if err := rows.Scan(&g.ClientID, &g.Applied, &g.Granted, &g.RowTokens, &g.Leased,
			&g.Holders, &g.RatePerSec, &g.Capacity, &hash, &g.Version, &next); err != nil {
			return nil, p.wrap("renew leases", err)
		}
		if len(hash) != len(g.KeyHash) {
			return nil, p.wrap("renew leases", fmt.Errorf("client %q: key hash has %d bytes", g.ClientID, len(hash)))
		}
		copy(g.KeyHash[:], hash)
		g.NextToken = time.Duration(next * float64(time.Second))
		grants = append(grants, g)
	}
	if err := rows.Err(); err != nil {
		return nil, p.wrap(fmt.Sprintf("renew %d leases", len(rs)), err)
	}
	return grants, nil
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
