-- Tokens scheduled ahead (SPEC 9): a holder that takes every token its
-- client's row has, and wants more, is also granted the next tokens the row
-- will refill within p_ahead (a fair part of them, no more than
-- p_want_ahead, what the holder expects to spend by then). The row goes
-- below zero by them, so that its refill pays them before anyone else's;
-- row + leases <= capacity still holds, the lease counting them. The reply
-- says how many (scheduled) and when the first falls due (first_due,
-- seconds from the server's clock read); the others follow one per token
-- of refill. The holder spends each only once due: an over-limit client
-- costs a few renewals a second instead of one round trip per admission,
-- and its requests never wait on the database.
--
-- Only a bucket that holds at least p_ahead of refill schedules ahead: in a
-- smaller one, tokens a holder got ahead and did not spend at once would
-- overflow it (the holder keeps at most capacity of them), and runs of a
-- few tokens would not outlast a renewal; such a bucket's holders renew
-- per token, as before.
--
-- next_token is now returned only when nothing at all was granted. The
-- shrink of a lease under a lowered capacity cuts only the excess of the
-- row and the leases over capacity: a lease holding scheduled tokens may
-- itself be larger than capacity, the row owing them.

-- +goose Up
DROP FUNCTION tollgate_renew_leases(text, double precision, text[], bigint[],
    double precision[], double precision[], double precision[],
    double precision[]);

-- +goose StatementBegin
CREATE FUNCTION tollgate_renew_leases(
    p_holder text, p_ttl double precision,
    p_ids text[], p_seqs bigint[], p_out double precision[],
    p_back double precision[], p_want double precision[],
    p_debt double precision[],
    p_ahead double precision, p_want_ahead double precision[])
RETURNS TABLE (
    id text, applied boolean, granted double precision,
    row_tokens double precision, leased double precision, holders integer,
    rate double precision, cap bigint, key_hash bytea, version bigint,
    next_token double precision, scheduled double precision,
    first_due double precision)
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
    s        double precision;
BEGIN
    FOR r IN
        SELECT * FROM unnest(p_ids, p_seqs, p_out, p_back, p_want, p_debt, p_want_ahead)
            AS u(cid, seq, out_, back_, want_, debt_, ahead_)
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
            scheduled := 0;
            first_due := 0;
            RETURN NEXT;
            CONTINUE;
        END IF;

        mine := 0;
        back := 0;
        IF l_found THEN
            mine := LEAST(GREATEST(COALESCE(r.out_, 0), 0), l_tokens);
            back := LEAST(GREATEST(COALESCE(r.back_, 0), 0), l_tokens - mine);
            -- Capacity lowered below the row and the leases: shrink to a
            -- fair part, by no more than the excess. (A lease can hold more
            -- than capacity: tokens scheduled ahead, which the row owes.)
            IF c.tokens + others + mine > c.capacity THEN
                mine := GREATEST(mine - (c.tokens + others + mine - c.capacity),
                    LEAST(mine, c.capacity::double precision / (n_others + 1)));
            END IF;
        END IF;
        avail := LEAST(
            c.tokens + back - GREATEST(COALESCE(r.debt_, 0), 0)
                + c.rate_per_sec * GREATEST(extract(epoch FROM now_ - c.last_refill), 0),
            c.capacity - others - mine);
        -- Below zero by a debt, by tokens scheduled ahead, or when capacity
        -- fell below the leases.
        avail := GREATEST(avail, LEAST(c.tokens, 0) - GREATEST(COALESCE(r.debt_, 0), 0));

        want := GREATEST(floor(COALESCE(r.want_, 0)), 0);
        IF avail >= want * (n_others + 1) THEN
            g := LEAST(want, floor(avail));
        ELSE
            g := LEAST(want, GREATEST(floor(avail / (n_others + 1)), LEAST(1, floor(avail))));
        END IF;
        g := GREATEST(g, 0);
        -- Took every token the row has and wants more: schedule the next
        -- ones the row refills within p_ahead, a fair part of them, no
        -- more than the holder expects to spend by then.
        s := 0;
        IF want > g AND g >= floor(avail) AND c.rate_per_sec > 0
                AND c.rate_per_sec * GREATEST(p_ahead, 0) <= c.capacity THEN
            s := GREATEST(LEAST(
                want - g,
                floor(GREATEST(COALESCE(r.ahead_, 0), 0)) - g,
                GREATEST(floor(c.rate_per_sec * GREATEST(p_ahead, 0) / (n_others + 1)), 1),
                floor(avail + c.rate_per_sec * GREATEST(p_ahead, 0)) - g), 0);
        END IF;

        UPDATE clients SET tokens = avail - g - s, last_refill = now_
            WHERE clients.client_id = r.cid;
        IF mine + g + s > 0 OR want > 0 THEN
            INSERT INTO client_leases AS l (client_id, holder, tokens, seq, expires_at)
                VALUES (r.cid, p_holder, mine + g + s, r.seq, now_ + p_ttl * interval '1 second')
                ON CONFLICT (client_id, holder) DO UPDATE
                SET tokens = EXCLUDED.tokens, seq = EXCLUDED.seq, expires_at = EXCLUDED.expires_at;
            holders := n_others + 1;
        ELSE
            DELETE FROM client_leases l WHERE l.client_id = r.cid AND l.holder = p_holder;
            holders := n_others;
        END IF;

        applied := true;
        granted := mine + g + s - COALESCE(r.out_, 0);
        row_tokens := avail - g - s;
        leased := others + mine + g + s;
        scheduled := s;
        first_due := 0;
        IF s > 0 THEN
            first_due := (1 - (avail - g)) / c.rate_per_sec;
        END IF;
        next_token := 0;
        IF g = 0 AND s = 0 AND want > 0 AND avail < 1 AND c.rate_per_sec > 0 THEN
            next_token := (1 - avail) / c.rate_per_sec;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION tollgate_renew_leases(text, double precision, text[], bigint[],
    double precision[], double precision[], double precision[],
    double precision[], double precision, double precision[]);

-- 00010's function, as it was.
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
