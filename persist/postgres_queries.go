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
	rate_per_sec, capacity, tokens, last_refill, generation, version`

// scanClient reads one row of clientCols.
func scanClient(row pgx.Row) (messages.Client, error) {
	var (
		c    messages.Client
		key  *string
		hash []byte
	)
	err := row.Scan(&c.ID, &key, &hash, &c.KeyPrefix,
		&c.RatePerSec, &c.Capacity, &c.Tokens, &c.LastRefill, &c.Generation, &c.Version)
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

// insertCols are the columns a create writes; version starts at 1.
const insertCols = `client_id, api_key, api_key_hash, api_key_prefix,
	rate_per_sec, capacity, tokens, last_refill, generation`

// CreateClient implements Store.
func (p *Postgres) CreateClient(ctx context.Context, c messages.Client) error {
	ctx, cancel := opContext(ctx)
	defer cancel()
	_, err := p.pool.Exec(ctx, `INSERT INTO clients (`+insertCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		c.ID, nullable(c.APIKey), c.KeyHash[:], c.KeyPrefix,
		c.RatePerSec, c.Capacity, c.Tokens, c.LastRefill, c.Generation)
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
			"rate_per_sec", "capacity", "tokens", "last_refill", "generation"},
		pgx.CopyFromSlice(len(cs), func(i int) ([]any, error) {
			c := &cs[i]
			return []any{c.ID, nullable(c.APIKey), c.KeyHash[:], c.KeyPrefix,
				c.RatePerSec, c.Capacity, c.Tokens, c.LastRefill, c.Generation}, nil
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
	rows, _ := p.pool.Query(ctx, `SELECT client_id, api_key_hash,
		rate_per_sec, capacity, generation, version FROM clients`)
	refs := []messages.KeyRef{}
	var (
		ref  messages.KeyRef
		hash []byte
	)
	scan := []any{&ref.ClientID, &hash, &ref.RatePerSec, &ref.Capacity, &ref.Generation, &ref.Version}
	_, err := pgx.ForEachRow(rows, scan, func() error {
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

// UpdateLimits implements Store. The refill at the old rate and the clamp
// happen in the same statement, so a concurrent save cannot slip between.
func (p *Postgres) UpdateLimits(ctx context.Context, id string, l messages.Limits) (messages.Client, error) {
	op := fmt.Sprintf("update limits of %q", id)
	if !storable(id) {
		return messages.Client{}, p.wrap(op, messages.ErrNotFound)
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	var at *time.Time
	if !l.At.IsZero() {
		at = &l.At
	}
	// In SET, column references see the row as it was: capacity,
	// rate_per_sec and last_refill on the right are the old ones. The
	// refill is messages.Limits.ApplyTo's: up to $4 at the old rate, none
	// when last_refill is already at or after $4; then the clamp.
	c, err := scanClient(p.pool.QueryRow(ctx, `UPDATE clients SET
			rate_per_sec = COALESCE($2, rate_per_sec),
			capacity = COALESCE($3, capacity),
			tokens = LEAST(COALESCE($3, capacity), CASE
				WHEN $4::timestamptz IS NULL OR $4 <= last_refill OR NOT tokens < capacity THEN tokens
				ELSE LEAST(capacity::float8,
					tokens + EXTRACT(EPOCH FROM ($4 - last_refill))::float8 * rate_per_sec)
				END),
			last_refill = GREATEST(last_refill, COALESCE($4, last_refill)),
			updated_at = now()
		WHERE client_id = $1
		RETURNING `+clientCols, id, l.RatePerSec, l.Capacity, at))
	return c, p.wrap(op, err)
}

// RotateKey implements Store. The CTE locks the row and keeps its old
// values, which RETURNING hands back; the version trigger bumps the new
// row's version by one.
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
			old.rate_per_sec, old.capacity, old.tokens, old.last_refill,
			old.generation, old.version`,
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
// many states there are. It only updates rows that exist and are of the
// state's generation, so a deleted client stays deleted and one created
// again with its id keeps its own state; a state older than the stored one
// (by last_refill) is skipped. Tokens clamp to the capacity as stored in
// case the limits changed since the state was read.
func (p *Postgres) SaveStates(ctx context.Context, states []messages.BucketState) error {
	if len(states) == 0 {
		return nil
	}
	states = latestStates(states)
	ids := make([]string, len(states))
	tokens := make([]float64, len(states))
	refills := make([]time.Time, len(states))
	gens := make([]int64, len(states))
	for i, s := range states {
		ids[i], tokens[i], refills[i], gens[i] = s.ClientID, s.Tokens, s.LastRefill, s.Generation
	}
	ctx, cancel := opContext(ctx)
	defer cancel()
	_, err := p.pool.Exec(ctx, `UPDATE clients c
		SET tokens = LEAST(u.tokens, c.capacity), last_refill = u.last_refill
		FROM unnest($1::text[], $2::float8[], $3::timestamptz[], $4::int8[])
			AS u(id, tokens, last_refill, generation)
		WHERE c.client_id = u.id AND c.generation = u.generation
			AND c.last_refill <= u.last_refill`, ids, tokens, refills, gens)
	return p.wrap(fmt.Sprintf("save %d states", len(states)), err)
}

// EraseClearKeys implements KeyEraser.
func (p *Postgres) EraseClearKeys(ctx context.Context) (int64, error) {
	ctx, cancel := opContext(ctx)
	defer cancel()
	tag, err := p.pool.Exec(ctx, `UPDATE clients SET api_key = NULL WHERE api_key IS NOT NULL`)
	return tag.RowsAffected(), p.wrap("erase clear keys", err)
}
