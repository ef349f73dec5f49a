package persist

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate/tollgate/messages"
)

// clientCols are the columns scanClient reads, in its order.
const clientCols = `client_id, api_key, api_key_hash, api_key_prefix,
	rate_per_sec, capacity, tokens, last_refill`

// scanClient reads one row of clientCols.
func scanClient(row pgx.Row) (messages.Client, error) {
	var (
		c    messages.Client
		key  *string
		hash []byte
	)
	err := row.Scan(&c.ID, &key, &hash, &c.KeyPrefix,
		&c.RatePerSec, &c.Capacity, &c.Tokens, &c.LastRefill)
	if err != nil {
		return messages.Client{}, err
	}
	if key != nil {
		c.APIKey = *key
	}
	if len(hash) != len(c.KeyHash) {
		return messages.Client{}, fmt.Errorf("client %q: key hash has %d bytes", c.ID, len(hash))
	}
	copy(c.KeyHash[:], hash)
	c.LastRefill = c.LastRefill.UTC()
	return c, nil
}

// nullable stores an empty key (hashed at rest) as NULL.
func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// CreateClient implements Store.
func (p *Postgres) CreateClient(ctx context.Context, c messages.Client) error {
	ctx, cancel := opContext(ctx)
	defer cancel()
	_, err := p.pool.Exec(ctx, `INSERT INTO clients (`+clientCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		c.ID, nullable(c.APIKey), c.KeyHash[:], c.KeyPrefix,
		c.RatePerSec, c.Capacity, c.Tokens, c.LastRefill)
	return p.wrap(fmt.Sprintf("create client %q", c.ID), err)
}

// CreateClients implements BulkCreator with one COPY in one transaction.
func (p *Postgres) CreateClients(ctx context.Context, cs []messages.Client) error {
	if len(cs) == 0 {
		return nil
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	_, err := p.pool.CopyFrom(ctx, pgx.Identifier{"clients"},
		[]string{"client_id", "api_key", "api_key_hash", "api_key_prefix",
			"rate_per_sec", "capacity", "tokens", "last_refill"},
		pgx.CopyFromSlice(len(cs), func(i int) ([]any, error) {
			c := &cs[i]
			return []any{c.ID, nullable(c.APIKey), c.KeyHash[:], c.KeyPrefix,
				c.RatePerSec, c.Capacity, c.Tokens, c.LastRefill}, nil
		}))
	return p.wrap(fmt.Sprintf("create %d clients", len(cs)), err)
}

// GetClient implements Store.
func (p *Postgres) GetClient(ctx context.Context, id string) (messages.Client, error) {
	op := fmt.Sprintf("get client %q", id)
	if !storable(id) {
		return messages.Client{}, p.wrap(op, messages.ErrNotFound)
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	c, err := scanClient(p.pool.QueryRow(ctx,
		`SELECT `+clientCols+` FROM clients WHERE client_id = $1`, id))
	return c, p.wrap(op, err)
}

// GetClientByKey implements Store.
func (p *Postgres) GetClientByKey(ctx context.Context, h messages.KeyHash) (messages.Client, error) {
	ctx, cancel := opContext(ctx)
	defer cancel()
	c, err := scanClient(p.pool.QueryRow(ctx,
		`SELECT `+clientCols+` FROM clients WHERE api_key_hash = $1`, h[:]))
	return c, p.wrap("get client by key", err)
}

// ListClients implements Store. A limit above MaxPage is MaxPage.
func (p *Postgres) ListClients(ctx context.Context, after string, limit int) ([]messages.Client, error) {
	if err := validText("after", after); err != nil {
		return nil, p.wrap("list clients", err)
	}
	limit = clampLimit(limit)
	if limit == 0 {
		return []messages.Client{}, nil
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	rows, _ := p.pool.Query(ctx, `SELECT `+clientCols+` FROM clients
		WHERE client_id > $1 ORDER BY client_id LIMIT $2`, after, limit)
	cs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (messages.Client, error) {
		return scanClient(row)
	})
	if err != nil {
		return nil, p.wrap(fmt.Sprintf("list clients after %q", after), err)
	}
	if cs == nil {
		cs = []messages.Client{}
	}
	return cs, nil
}

// KeyRefs implements Store.
func (p *Postgres) KeyRefs(ctx context.Context) ([]messages.KeyRef, error) {
	ctx, cancel := opContext(ctx)
	defer cancel()
	rows, _ := p.pool.Query(ctx, `SELECT client_id, api_key_hash FROM clients`)
	refs := []messages.KeyRef{}
	var (
		ref  messages.KeyRef
		hash []byte
	)
	_, err := pgx.ForEachRow(rows, []any{&ref.ClientID, &hash}, func() error {
		if len(hash) != len(ref.KeyHash) {
			return fmt.Errorf("client %q: key hash has %d bytes", ref.ClientID, len(hash))
		}
		copy(ref.KeyHash[:], hash)
		refs = append(refs, ref)
		return nil
	})
	if err != nil {
		return nil, p.wrap("key refs", err)
	}
	return refs, nil
}

// UpdateLimits implements Store. The clamp happens in the same statement,
// so a concurrent save cannot slip between the two.
func (p *Postgres) UpdateLimits(ctx context.Context, id string, l messages.Limits) (messages.Client, error) {
	op := fmt.Sprintf("update limits of %q", id)
	if !storable(id) {
		return messages.Client{}, p.wrap(op, messages.ErrNotFound)
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	// In SET, column references see the row as it was: capacity on the
	// right is the old one, $3 the new one.
	c, err := scanClient(p.pool.QueryRow(ctx, `UPDATE clients SET
			rate_per_sec = COALESCE($2, rate_per_sec),
			capacity = COALESCE($3, capacity),
			tokens = LEAST(tokens, COALESCE($3, capacity)),
			updated_at = now()
		WHERE client_id = $1
		RETURNING `+clientCols, id, l.RatePerSec, l.Capacity))
	return c, p.wrap(op, err)
}

// RotateKey implements Store. The CTE locks the row and keeps its old
// values, which RETURNING hands back.
func (p *Postgres) RotateKey(ctx context.Context, id, apiKey string, h messages.KeyHash, prefix string) (messages.Client, error) {
	op := fmt.Sprintf("rotate key of %q", id)
	if !storable(id) {
		return messages.Client{}, p.wrap(op, messages.ErrNotFound)
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	old, err := scanClient(p.pool.QueryRow(ctx, `WITH old AS (
			SELECT `+clientCols+` FROM clients WHERE client_id = $1 FOR UPDATE
		)
		UPDATE clients c SET api_key = $2, api_key_hash = $3, api_key_prefix = $4,
			updated_at = now()
		FROM old WHERE c.client_id = old.client_id
		RETURNING old.client_id, old.api_key, old.api_key_hash, old.api_key_prefix,
			old.rate_per_sec, old.capacity, old.tokens, old.last_refill`,
		id, nullable(apiKey), h[:], prefix))
	return old, p.wrap(op, err)
}

// DeleteClient implements Store.
func (p *Postgres) DeleteClient(ctx context.Context, id string) (messages.Client, error) {
	op := fmt.Sprintf("delete client %q", id)
	if !storable(id) {
		return messages.Client{}, p.wrap(op, messages.ErrNotFound)
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	c, err := scanClient(p.pool.QueryRow(ctx,
		`DELETE FROM clients WHERE client_id = $1 RETURNING `+clientCols, id))
	return c, p.wrap(op, err)
}

// SaveStates implements Store in one statement, one round trip, however
// many states there are. It only updates rows that exist, so a deleted
// client stays deleted, and clamps tokens to the capacity as stored in
// case the limits changed since the state was read.
func (p *Postgres) SaveStates(ctx context.Context, states []messages.BucketState) error {
	if len(states) == 0 {
		return nil
	}
	states = latestStates(states)
	ids := make([]string, len(states))
	tokens := make([]float64, len(states))
	refills := make([]time.Time, len(states))
	for i, s := range states {
		ids[i], tokens[i], refills[i] = s.ClientID, s.Tokens, s.LastRefill
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	_, err := p.pool.Exec(ctx, `UPDATE clients c
		SET tokens = LEAST(u.tokens, c.capacity), last_refill = u.last_refill
		FROM unnest($1::text[], $2::float8[], $3::timestamptz[]) AS u(id, tokens, last_refill)
		WHERE c.client_id = u.id`, ids, tokens, refills)
	return p.wrap(fmt.Sprintf("save %d states", len(states)), err)
}
