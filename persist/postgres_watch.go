package persist

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate/tollgate/messages"
)

// Watcher is a Store that reports admin changes made by any instance
// sharing it. The embedded store has no other instances and is no Watcher.
type Watcher interface {
	// Watch calls apply with every change until ctx is cancelled, then
	// returns nil. Whenever changes may have been missed (when it starts
	// listening, after a lost connection) and every resyncEvery besides,
	// it calls apply with a Resync change instead. It stops early, with
	// nil, when apply returns messages.ErrStopped.
	Watch(ctx context.Context, resyncEvery time.Duration, apply func(context.Context, messages.Change) error) error
}

var _ Watcher = (*Postgres)(nil)

const (
	notifyChannel    = "tollgate_clients"
	listenAppName    = "tollgate-listener"
	listenBackoffMin = 100 * time.Millisecond
	// listenBackoffMax keeps SPEC 6's bound within reach after an outage:
	// changes on other instances apply within about a second of the
	// store's return.
	listenBackoffMax  = time.Second
	defaultResyncEach = time.Minute
)

// Watch listens on its own connection, taken out of the pool for good,
// and reconnects with backoff when it is lost.
func (p *Postgres) Watch(ctx context.Context, resyncEvery time.Duration, apply func(context.Context, messages.Change) error) error {
	if resyncEvery <= 0 {
		resyncEvery = defaultResyncEach
	}
	log := p.log.With("component", "listener")
	backoff := listenBackoffMin
	wait := time.NewTimer(0)
	defer wait.Stop()
	for first := true; ; first = false {
		listened, err := p.listen(ctx, !first, resyncEvery, apply)
		if ctx.Err() != nil || errors.Is(err, messages.ErrStopped) {
			return nil
		}
		if listened {
			backoff = listenBackoffMin // a fresh loss, not a failing reconnect
		}
		log.Warn("change listener lost; reconnecting", "backoff", backoff.String(), slog.Any("err", err))
		wait.Reset(backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-wait.C:
		}
		backoff = min(2*backoff, listenBackoffMax)
	}
}

// listen runs one listening connection until it fails, and reports
// whether it got as far as listening. The connection is its own, not the
// pool's: a pooled connection that died silently could hang its acquire.
func (p *Postgres) listen(ctx context.Context, reconnected bool, resyncEvery time.Duration, apply func(context.Context, messages.Change) error) (bool, error) {
	cfg := p.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = listenAppName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, p.wrap("listen", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return false, p.wrap("listen", err)
	}
	// Changes made before LISTEN took effect were not heard: at start,
	// those since the key index was loaded; after a loss, any number,
	// so cached clients may be stale too.
	if err := apply(ctx, messages.Change{Resync: true, DropCache: reconnected}); err != nil {
		return true, err
	}
	// The periodic resync runs on its own ticker, which notifications do
	// not reset: under a steady stream of changes it still runs.
	resync := time.NewTicker(resyncEvery)
	defer resync.Stop()
	for {
		select {
		case <-resync.C:
			if err := apply(ctx, messages.Change{Resync: true}); err != nil {
				return true, err
			}
		default:
		}
		if err := p.wait(ctx, conn, apply); err != nil {
			return true, err
		}
	}
}

// listenCheck is how long the listener waits for a notification before it
// checks its connection, and how long that check may take: a connection
// that died silently (a half-open TCP connection) is noticed within about
// two of these, a second (SPEC 6), not when TCP keepalive gives up
// minutes later.
const listenCheck = 500 * time.Millisecond

// wait handles one notification, or checks the connection when none came
// within listenCheck.
func (p *Postgres) wait(ctx context.Context, conn *pgx.Conn, apply func(context.Context, messages.Change) error) error {
	wctx, cancel := context.WithTimeout(ctx, listenCheck)
	n, err := conn.WaitForNotification(wctx)
	cancel()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil && errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
		pctx, cancel := context.WithTimeout(ctx, listenCheck)
		defer cancel()
		return p.wrap("listen: check connection", conn.Ping(pctx))
	case err != nil:
		return p.wrap("listen", err)
	}
	ch, err := decodeChange(n.Payload)
	if err != nil {
		// Not ours to fail on: someone else's payload on our channel.
		p.log.Warn("ignoring malformed change notification", slog.Any("err", err))
		return nil
	}
	return apply(ctx, ch)
}

type changePayload struct {
	Op         string  `json:"op"`
	ID         string  `json:"id"`
	Hash       string  `json:"hash"`
	OldHash    string  `json:"old_hash"`
	Rate       float64 `json:"rate"`
	Capacity   int64   `json:"capacity"`
	Generation int64   `json:"generation"`
	Version    int64   `json:"version"`
}

func decodeChange(payload string) (messages.Change, error) {
	var cp changePayload
	if err := json.Unmarshal([]byte(payload), &cp); err != nil {
		return messages.Change{}, fmt.Errorf("persist: change payload: %w", err)
	}
	ch := messages.Change{ClientID: cp.ID, Deleted: cp.Op == "delete", RatePerSec: cp.Rate, Capacity: cp.Capacity,
		Generation: cp.Generation, Version: cp.Version}
	if cp.Op != "delete" && cp.Op != "upsert" {
		return ch, fmt.Errorf("persist: change payload: unknown op %q", cp.Op)
	}
	if err := decodeHash(cp.Hash, &ch.KeyHash); err != nil {
		return ch, err
	}
	if cp.OldHash != "" {
		if err := decodeHash(cp.OldHash, &ch.OldKeyHash); err != nil {
			return ch, err
		}
	}
	return ch, nil
}

func decodeHash(s string, h *messages.KeyHash) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return fmt.Errorf("persist: change payload: bad key hash %q", s)
	}
	copy(h[:], b)
	return nil
}
