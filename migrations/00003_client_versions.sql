-- Client generations and versions (SPEC 5).
--
-- generation is chosen by the instance that creates a client and never
-- changes: a bucket state saved from one client never lands on another
-- created later with the same client_id (SaveStates matches it).
-- version is 1 at insert and grows by one with every admin change of the
-- limits or the key, stamped here so that no writer can forget it; bucket
-- saves (tokens, last_refill) leave it alone. Caches compare it to drop
-- limits older than what they hold, and it travels in the notification.
-- Rows that existed before get generation 0 and version 1.

-- +goose Up
ALTER TABLE clients
    ADD COLUMN generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN version    bigint NOT NULL DEFAULT 1;

-- +goose StatementBegin
CREATE FUNCTION tollgate_bump_client_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER clients_version
    BEFORE UPDATE OF rate_per_sec, capacity, api_key_hash ON clients
    FOR EACH ROW EXECUTE FUNCTION tollgate_bump_client_version();

-- The notification now carries generation and version.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tollgate_notify_client_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tollgate_clients', json_build_object(
            'op', 'delete',
            'id', OLD.client_id,
            'hash', encode(OLD.api_key_hash, 'hex'),
            'generation', OLD.generation,
            'version', OLD.version)::text);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('tollgate_clients', json_build_object(
        'op', 'upsert',
        'id', NEW.client_id,
        'hash', encode(NEW.api_key_hash, 'hex'),
        'old_hash', CASE WHEN TG_OP = 'UPDATE' AND OLD.api_key_hash <> NEW.api_key_hash
                         THEN encode(OLD.api_key_hash, 'hex') END,
        'rate', NEW.rate_per_sec,
        'capacity', NEW.capacity,
        'generation', NEW.generation,
        'version', NEW.version)::text);
    RETURN NEW;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tollgate_notify_client_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tollgate_clients', json_build_object(
            'op', 'delete',
            'id', OLD.client_id,
            'hash', encode(OLD.api_key_hash, 'hex'))::text);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('tollgate_clients', json_build_object(
        'op', 'upsert',
        'id', NEW.client_id,
        'hash', encode(NEW.api_key_hash, 'hex'),
        'old_hash', CASE WHEN TG_OP = 'UPDATE' AND OLD.api_key_hash <> NEW.api_key_hash
                         THEN encode(OLD.api_key_hash, 'hex') END,
        'rate', NEW.rate_per_sec,
        'capacity', NEW.capacity)::text);
    RETURN NEW;
END
$$;
-- +goose StatementEnd
DROP TRIGGER clients_version ON clients;
DROP FUNCTION tollgate_bump_client_version();
ALTER TABLE clients DROP COLUMN version, DROP COLUMN generation;
