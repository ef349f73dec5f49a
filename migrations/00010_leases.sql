-- Token leases (SPEC 9): with several instances on one database the
-- client's row is the bucket, and each instance holds a lease on it, a
-- slice of tokens taken ahead of need and spent in memory.
--
-- client_leases has one row per (client, holder): tokens is what the row
-- believes the holder still has unspent (never less than the truth: the
-- holder reports what it has left, and a report only lowers it), seq the
-- holder's last applied renewal (a late statement with an older seq applies
-- nothing), expires_at when the lease is lost if the holder stops renewing.
--
-- The invariant: clients.tokens + sum(live leases) <= capacity. Refill
-- happens in tollgate_renew_leases only, on the server's clock, capped at
-- capacity minus the live leases; a lease's tokens move to and from the row
-- in the same statement that changes the lease.
--
-- Numbered 00010 to leave room for other changes made alongside.

-- +goose Up
CREATE TABLE client_leases (
    client_id  text COLLATE "C" NOT NULL
        REFERENCES clients (client_id) ON DELETE CASCADE,
    holder     text NOT NULL,
    tokens     double precision NOT NULL,
    seq        bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT client_leases_pkey PRIMARY KEY (client_id, holder)
);

-- tollgate_renew_leases renews every lease of one holder in one call, one
-- round trip per batch. Per client, in client_id order (so that two holders
-- renewing overlapping sets lock rows in the same order and cannot
-- deadlock), with the client row locked:
--   1. sweep the client's expired leases: their unspent tokens are lost,
--      which raises the row's cap again;
--   2. take the holder's report: p_out, the tokens it still holds, at most
--      what the lease has (an expired or missing lease holds nothing),
--      p_back, tokens it hands back to the row, and p_debt, tokens it
--      admitted without a lease while the store was away (the row pays
--      them, going below zero if it must: refill pays that back first);
--   3. refill the row at rate_per_sec since last_refill, capped at
--      capacity minus every live lease (capacity lowered below the leases:
--      this holder's lease shrinks to its fair part);
--   4. grant up to p_want whole tokens, split fairly between live holders
--      when the row cannot give everyone what this holder asks;
--   5. keep the lease until now + p_ttl, or drop it when it holds nothing
--      and wants nothing.
-- lock_timeout keeps a call from waiting on a locked row longer than the
-- holder waits for its answer: a call the holder gave up on must fail, not
-- apply later when nobody reads its grant. A deleted client returns no row. granted is the new lease minus p_out,
-- negative when the lease shrank; next_token is the seconds until the row
-- holds one token, when it grants nothing.
-- +goose StatementBegin
CREATE FUNCTION tollgate_renew_leases(
    p_holder text, p_ttl double precision,
    p_ids text[], p_seqs bigint[], p_out double precision[],
    p_back double precision[], p_want double precision[],
    p_debt double precision[])
RETURNS TABLE (
    id text, applied boolean, granted double precision,
    row_tokens double precision, leased double precision, holders integer,
    rate double precision, cap bigint, key_hash bytea, version bigint,
    next_token double precision)
LANGUAGE plpgsql
SET lock_timeout = '500ms'
AS $$
DECLARE
    r        record;
    c        record;
    now_     timestamptz;
    l_tokens double precision;
    l_seq    bigint;
    l_found  boolean;
    others   double precision;
    n_others integer;
    mine     double precision;
    back     double precision;
    avail    double precision;
    want     double precision;
    g        double precision;
BEGIN
    FOR r IN
        SELECT * FROM unnest(p_ids, p_seqs, p_out, p_back, p_want, p_debt)
            AS u(cid, seq, out_, back_, want_, debt_)
        ORDER BY cid
    LOOP
        SELECT * INTO c FROM clients WHERE clients.client_id = r.cid FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        now_ := clock_timestamp();
        id := c.client_id;
        rate := c.rate_per_sec;
        cap := c.capacity;
        key_hash := c.api_key_hash;
        version := c.version;

        DELETE FROM client_leases l
            WHERE l.client_id = r.cid AND l.holder <> p_holder AND l.expires_at <= now_;
        SELECT l.tokens, l.seq INTO l_tokens, l_seq FROM client_leases l
            WHERE l.client_id = r.cid AND l.holder = p_holder AND l.expires_at > now_;
        l_found := FOUND;
        SELECT COALESCE(sum(l.tokens), 0), count(*) INTO others, n_others
            FROM client_leases l
            WHERE l.client_id = r.cid AND l.holder <> p_holder;

        IF l_found AND l_seq >= r.seq THEN
            -- An older statement arriving late: apply nothing.
            applied := false;
            granted := 0;
            row_tokens := c.tokens;
            leased := others + l_tokens;
            holders := n_others + 1;
            next_token := 0;
            RETURN NEXT;
            CONTINUE;
        END IF;

        mine := 0;
        back := 0;
        IF l_found THEN
            mine := LEAST(GREATEST(COALESCE(r.out_, 0), 0), l_tokens);
            back := LEAST(GREATEST(COALESCE(r.back_, 0), 0), l_tokens - mine);
            -- Capacity lowered below the leases: shrink to a fair part.
            mine := LEAST(mine, GREATEST(c.capacity - others, c.capacity::double precision / (n_others + 1)));
        END IF;
        avail := LEAST(
            c.tokens + back - GREATEST(COALESCE(r.debt_, 0), 0)
                + c.rate_per_sec * GREATEST(extract(epoch FROM now_ - c.last_refill), 0),
            c.capacity - others - mine);
        -- Below zero only by a debt, or when capacity fell below the leases.
        avail := GREATEST(avail, LEAST(c.tokens, 0) - GREATEST(COALESCE(r.debt_, 0), 0));

        want := GREATEST(floor(COALESCE(r.want_, 0)), 0);
        IF avail >= want * (n_others + 1) THEN
            g := LEAST(want, floor(avail));
        ELSE
            g := LEAST(want, GREATEST(floor(avail / (n_others + 1)), LEAST(1, floor(avail))));
        END IF;
        g := GREATEST(g, 0);

        UPDATE clients SET tokens = avail - g, last_refill = now_
            WHERE clients.client_id = r.cid;
        IF mine + g > 0 OR want > 0 THEN
            INSERT INTO client_leases AS l (client_id, holder, tokens, seq, expires_at)
                VALUES (r.cid, p_holder, mine + g, r.seq, now_ + p_ttl * interval '1 second')
                ON CONFLICT (client_id, holder) DO UPDATE
                SET tokens = EXCLUDED.tokens, seq = EXCLUDED.seq, expires_at = EXCLUDED.expires_at;
            holders := n_others + 1;
        ELSE
            DELETE FROM client_leases l WHERE l.client_id = r.cid AND l.holder = p_holder;
            holders := n_others;
        END IF;

        applied := true;
        granted := mine + g - COALESCE(r.out_, 0);
        row_tokens := avail - g;
        leased := others + mine + g;
        next_token := 0;
        IF g = 0 AND want > 0 AND avail - g < 1 THEN
            next_token := (1 - (avail - g)) / c.rate_per_sec;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION tollgate_renew_leases(text, double precision, text[], bigint[],
    double precision[], double precision[], double precision[],
    double precision[]);
DROP TABLE client_leases;
