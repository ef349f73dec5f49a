-- Change notifications: every admin change to a client (create, limits,
-- key rotation, delete) is announced on channel tollgate_clients, so other
-- instances sharing the database update their key index and cached
-- clients at once. Bucket saves (tokens, last_refill) do not notify.
-- Payload: {"op": "upsert"|"delete", "id", "hash", "old_hash"?, "rate",
-- "capacity"}, hashes in hex; at most ~400 bytes (client_id <= 128).

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION tollgate_notify_client_change() RETURNS trigger
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

CREATE TRIGGER clients_notify
    AFTER INSERT OR DELETE OR UPDATE OF rate_per_sec, capacity, api_key_hash ON clients
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_client_change();

-- +goose Down
DROP TRIGGER clients_notify ON clients;
DROP FUNCTION tollgate_notify_client_change();
