package persist

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate/tollgate/messages"
)

var (
	errIDTaken  = fmt.Errorf("%w: client_id already exists", messages.ErrConflict)
	errKeyTaken = fmt.Errorf("%w: api_key already exists", messages.ErrConflict)
)

// CreateClient implements Store.
func (b *Bolt) CreateClient(_ context.Context, c messages.Client) error {
	if err := validate(c); err != nil {
		return b.wrap(fmt.Sprintf("create client %q", c.ID), err)
	}
	err := b.update(func(clients, keys *bolt.Bucket) error {
		return insert(clients, keys, c)
	})
	return b.wrap(fmt.Sprintf("create client %q", c.ID), err)
}

// CreateClients implements BulkCreator in one transaction.
func (b *Bolt) CreateClients(_ context.Context, cs []messages.Client) error {
	op := fmt.Sprintf("create %d clients", len(cs))
	for _, c := range cs {
		if err := validate(c); err != nil {
			return b.wrap(op, fmt.Errorf("client %q: %w", c.ID, err))
		}
	}
	err := b.update(func(clients, keys *bolt.Bucket) error {
		for _, c := range cs {
			if err := insert(clients, keys, c); err != nil {
				return fmt.Errorf("client %q: %w", c.ID, err)
			}
		}
		return nil
	})
	return b.wrap(op, err)
}

// insert adds a new client to both buckets.
func insert(clients, keys *bolt.Bucket, c messages.Client) error {
	id := []byte(c.ID)
	if clients.Get(id) != nil {
		return errIDTaken
	}
	if keys.Get(c.KeyHash[:]) != nil {
		return errKeyTaken
	}
	c.LastRefill = storedTime(c.LastRefill)
	c.Version = 1
	if err := clients.Put(id, encodeRecord(c)); err != nil {
		return err
	}
	return keys.Put(bytes.Clone(c.KeyHash[:]), id)
}

// get decodes the client stored under id.
func get(clients *bolt.Bucket, id []byte) (messages.Client, error) {
	v := clients.Get(id)
	if v == nil {
		return messages.Client{}, messages.ErrNotFound
	}
	return decodeRecord(string(id), v)
}

// GetClient implements Store.
func (b *Bolt) GetClient(_ context.Context, id string) (messages.Client, error) {
	var c messages.Client
	err := b.view(func(clients, _ *bolt.Bucket) (err error) {
		c, err = get(clients, []byte(id))
		return err
	})
	return c, b.wrap(fmt.Sprintf("get client %q", id), err)
}

// GetClientByKey implements Store.
func (b *Bolt) GetClientByKey(_ context.Context, h messages.KeyHash) (messages.Client, error) {
	var c messages.Client
	err := b.view(func(clients, keys *bolt.Bucket) error {
		id := keys.Get(h[:])
		if id == nil {
			return messages.ErrNotFound
		}
		var err error
		if c, err = get(clients, id); err != nil {
			return fmt.Errorf("key index names client %q: %w", id, errCorrupt)
		}
		return nil
	})
	return c, b.wrap("get client by key", err)
}

// ListClients implements Store. A limit above MaxPage is MaxPage.
func (b *Bolt) ListClients(_ context.Context, after string, limit int) ([]messages.Client, error) {
	if err := validText("after", after); err != nil {
		return nil, b.wrap("list clients", err)
	}
	limit = clampLimit(limit)
	cs := []messages.Client{}
	if limit == 0 {
		return cs, nil
	}
	err := b.view(func(clients, _ *bolt.Bucket) error {
		cur := clients.Cursor()
		k, v := cur.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = cur.Next()
		}
		for ; k != nil && len(cs) < limit; k, v = cur.Next() {
			c, err := decodeRecord(string(k), v)
			if err != nil {
				return err
			}
			cs = append(cs, c)
		}
		return nil
	})
	if err != nil {
		return nil, b.wrap(fmt.Sprintf("list clients after %q", after), err)
	}
	return cs, nil
}

// KeyRefs implements Store. It reads the fixed fields of each record in
// id order, a sequential scan: start-up reads every client. Every write
// keeps a record's key hash and the "keys" bucket in step.
func (b *Bolt) KeyRefs(context.Context) ([]messages.KeyRef, error) {
	refs := []messages.KeyRef{}
	err := b.view(func(clients, _ *bolt.Bucket) error {
		if n := clients.Stats().KeyN; n > 0 {
			refs = make([]messages.KeyRef, 0, n)
		}
		return clients.ForEach(func(id, v []byte) error {
			if !validRecord(v) {
				return fmt.Errorf("client %q: %w", id, errCorrupt)
			}
			ref := messages.KeyRef{ClientID: string(id),
				RatePerSec: recordRate(v), Capacity: recordCapacity(v),
				Generation: recordGeneration(v), Version: recordVersion(v)}
			copy(ref.KeyHash[:], v[offHash:fixedLen])
			refs = append(refs, ref)
			return nil
		})
	})
	if err != nil {
		return nil, b.wrap("key refs", err)
	}
	return refs, nil
}

// UpdateLimits implements Store.
func (b *Bolt) UpdateLimits(_ context.Context, id string, l messages.Limits) (messages.Client, error) {
	op := fmt.Sprintf("update limits of %q", id)
	if err := validateLimits(l); err != nil {
		return messages.Client{}, b.wrap(op, err)
	}
	var c messages.Client
	err := b.update(func(clients, _ *bolt.Bucket) (err error) {
		if c, err = get(clients, []byte(id)); err != nil {
			return err
		}
		l.At = storedTime(l.At)
		l.ApplyTo(&c)
		c.Version++
		return clients.Put([]byte(id), encodeRecord(c))
	})
	if err != nil {
		return messages.Client{}, b.wrap(op, err)
	}
	return c, nil
}

// RotateKey implements Store.
func (b *Bolt) RotateKey(_ context.Context, id, apiKey string, h messages.KeyHash, prefix string) (messages.Client, error) {
	op := fmt.Sprintf("rotate key of %q", id)
	if err := validText("api_key", apiKey); err != nil {
		return messages.Client{}, b.wrap(op, err)
	}
	if err := validText("api_key_prefix", prefix); err != nil {
		return messages.Client{}, b.wrap(op, err)
	}
	var old messages.Client
	err := b.update(func(clients, keys *bolt.Bucket) (err error) {
		if old, err = get(clients, []byte(id)); err != nil {
			return err
		}
		if owner := keys.Get(h[:]); owner != nil && string(owner) != id {
			return errKeyTaken
		}
		if err := keys.Delete(old.KeyHash[:]); err != nil {
			return err
		}
		if err := keys.Put(bytes.Clone(h[:]), []byte(id)); err != nil {
			return err
		}
		c := old
		c.APIKey, c.KeyHash, c.KeyPrefix = apiKey, h, prefix
		c.Version++
		return clients.Put([]byte(id), encodeRecord(c))
	})
	if err != nil {
		return messages.Client{}, b.wrap(op, err)
	}
	return old, nil
}

// DeleteClient implements Store.
func (b *Bolt) DeleteClient(_ context.Context, id string) (messages.Client, error) {
	var old messages.Client
	err := b.update(func(clients, keys *bolt.Bucket) (err error) {
		if old, err = get(clients, []byte(id)); err != nil {
			return err
		}
		if err := keys.Delete(old.KeyHash[:]); err != nil {
			return err
		}
		return clients.Delete([]byte(id))
	})
	if err != nil {
		return messages.Client{}, b.wrap(fmt.Sprintf("delete client %q", id), err)
	}
	return old, nil
}

// SaveStates implements Store in one transaction. It patches the state
// fields of each stored record of the state's generation, skipping ids
// that do not exist and states older than the stored one, and clamps
// tokens to the stored capacity as Postgres does.
func (b *Bolt) SaveStates(_ context.Context, states []messages.BucketState) error {
	if len(states) == 0 {
		return nil
	}
	states = latestStates(states)
	err := b.update(func(clients, _ *bolt.Bucket) error {
		for _, s := range states {
			id := []byte(s.ClientID)
			v := clients.Get(id)
			if v == nil {
				continue
			}
			if !validRecord(v) {
				return fmt.Errorf("client %q: %w", s.ClientID, errCorrupt)
			}
			if recordGeneration(v) != s.Generation || recordLastRefill(v).After(storedTime(s.LastRefill)) {
				continue
			}
			// v is bolt's memory: write a copy.
			rec := bytes.Clone(v)
			putState(rec, clampTokens(s.Tokens, recordCapacity(rec)), s.LastRefill)
			if err := clients.Put(id, rec); err != nil {
				return err
			}
		}
		return nil
	})
	return b.wrap(fmt.Sprintf("save %d states", len(states)), err)
}

// EraseClearKeys implements KeyEraser in one transaction.
func (b *Bolt) EraseClearKeys(context.Context) (int64, error) {
	var n int64
	err := b.update(func(clients, _ *bolt.Bucket) error {
		var erase []messages.Client
		err := clients.ForEach(func(k, v []byte) error {
			c, err := decodeRecord(string(k), v)
			if err == nil && c.APIKey != "" {
				c.APIKey = ""
				erase = append(erase, c)
			}
			return err
		})
		if err != nil {
			return err
		}
		for _, c := range erase {
			if err := clients.Put([]byte(c.ID), encodeRecord(c)); err != nil {
				return err
			}
		}
		n = int64(len(erase))
		return nil
	})
	return n, b.wrap("erase clear keys", err)
}
