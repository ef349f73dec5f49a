package actors

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/messages"
	"github.com/tollgate/tollgate/persist"
)

// SharedBuckets makes a Limiter share its clients' buckets with every
// instance on the same store, through leases (SPEC 9).
type SharedBuckets struct {
	Store persist.LeaseStore
	// LeaseTTL is lease_ttl (default 5s).
	LeaseTTL time.Duration
	// ReportInterval is the longest time between two renewals of a held
	// lease, reporting what was spent: save_state_interval (default 10s;
	// half the lease_ttl when that is shorter).
	ReportInterval time.Duration
	// StoreDownPolicy is rate_limiter.store_down_policy (default "safe").
	StoreDownPolicy string
	// FlushTimeout bounds the handback at shutdown (default 10s).
	FlushTimeout time.Duration
}

// Batching of renewals: a request waiting for its lease is batched within
// leaseUrgentDelay, a lease running low within leaseSoonDelay. Every
// leaseTick the leases holding tokens scheduled ahead are looked at (those
// nobody asks for go back), and every other tick all leases (idle ones
// handed back, held ones reported and kept alive).
const (
	leaseUrgentDelay = time.Millisecond
	leaseSoonDelay   = 10 * time.Millisecond
	leaseTick        = 50 * time.Millisecond
	leaseMaxInflight = 2
	// leaseRenewTimeout is above the statement's lock_timeout (0.5 s), so
	// a renewal stuck behind a lock fails in the server before the
	// Leaser gives up on it, rather than applying later.
	leaseRenewTimeout = time.Second
)

func newLeaseShared(sb *SharedBuckets) *leaseShared {
	ttl := orDefault(sb.LeaseTTL, 5*time.Second)
	policy := sb.StoreDownPolicy
	if policy == "" {
		policy = "safe"
	}
	return &leaseShared{
		policy:     newLeasePolicy(ttl, orDefault(sb.ReportInterval, 10*time.Second)),
		downPolicy: policy,
		epoch:      time.Now(),
		soon:       make(chan struct{}, 1),
		urgent:     make(chan struct{}, 1),
	}
}

// Leaser renews the leases of one instance: one statement per batch for
// every client due, never two renewals of one client at once. It is the
// only one to talk to the store about leases; the shards decide requests
// and hand it what is due. It waits on the shards, never they on it (they
// only wake it), and hands every lease back when it stops.
type Leaser struct {
	lim     *Limiter
	store   persist.LeaseStore
	ls      *leaseShared
	holder  string
	ttl     time.Duration
	flush   time.Duration
	log     *slog.Logger
	results chan leaseBatch
	done    chan struct{}

	// Owned by the Run goroutine.
	seq      int64
	inflight int
	pending  bool // a batch was due while leaseMaxInflight were out

	// Counts for Stats, read from any goroutine.
	statements, renewals, failures atomic.Int64
}

type leaseBatch struct {
	seq    int64
	outs   [][]leaseOut // by shard
	grants []messages.LeaseGrant
	err    error
}

// NewLeaser returns the Leaser of a Limiter made with SharedBuckets, or nil
// if it was made without.
func NewLeaser(lim *Limiter, log *slog.Logger) *Leaser {
	if lim.cfg.lease == nil {
		return nil
	}
	sb := lim.shared
	return &Leaser{
		lim:     lim,
		store:   sb.Store,
		ls:      lim.cfg.lease,
		holder:  holderID(),
		ttl:     orDefault(sb.LeaseTTL, 5*time.Second),
		flush:   orDefault(sb.FlushTimeout, 10*time.Second),
		log:     log.With("actor", "leaser"),
		results: make(chan leaseBatch, leaseMaxInflight),
		done:    make(chan struct{}),
	}
}

// holderID names this process's leases in the store: readable, and unique
// across restarts and hosts.
func holderID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
}

// Run renews leases until ctx is cancelled, then waits for the batches in
// flight, hands every lease back within FlushTimeout and returns nil. The
// shards must still be running then: stop them after Run returns.
func (x *Leaser) Run(ctx context.Context) error {
	defer close(x.done)
	x.log.Info("leasing", "holder", x.holder, "lease_ttl", x.ttl.String(), "store_down_policy", x.ls.downPolicy)
	tick := time.NewTicker(leaseTick)
	defer tick.Stop()
	batch := time.NewTimer(time.Hour)
	batch.Stop()
	var batchAt time.Time // when batch fires; zero when stopped
	wake := time.NewTimer(time.Hour)
	wake.Stop()
	waking := false // wake is armed
	ticks := 0
	arm := func(d time.Duration) {
		if at := time.Now().Add(d); batchAt.IsZero() || at.Before(batchAt) {
			batchAt = at
			batch.Reset(d)
		}
	}
	for {
		select {
		case <-ctx.Done():
			for x.inflight > 0 {
				x.deliver(context.WithoutCancel(ctx), <-x.results)
			}
			x.release(context.WithoutCancel(ctx))
			return nil
		case <-tick.C:
			ticks++
			x.send(ctx, ticks%2 == 0)
		case <-x.ls.urgent:
			arm(leaseUrgentDelay)
			// Requests wait at most leaseMaxWait: answer them then, renewed
			// or not.
			if !waking {
				waking = true
				wake.Reset(time.Duration(leaseMaxWait) + time.Millisecond)
			}
		case <-x.ls.soon:
			arm(leaseSoonDelay)
		case <-batch.C:
			batchAt = time.Time{}
			x.send(ctx, false)
		case b := <-x.results:
			x.deliver(ctx, b)
			if x.pending {
				x.send(ctx, false)
			}
		case <-wake.C:
			waking = false
			x.lim.broadcast(leaseWakeTick{})
		}
	}
}

// send collects what is due from the shards and sends it as one batch,
// unless leaseMaxInflight batches are out already.
func (x *Leaser) send(ctx context.Context, full bool) {
	if x.inflight >= leaseMaxInflight {
		x.pending = true
		return
	}
	x.pending = false
	x.seq++
	outs, n, err := x.lim.leaseCollect(ctx, &leaseCollectMsg{seq: x.seq, full: full})
	if err != nil || n == 0 {
		return // stopping; or nothing due
	}
	rs := make([]messages.LeaseRenewal, 0, n)
	for _, o := range outs {
		for _, out := range o {
			rs = append(rs, out.q)
		}
	}
	x.inflight++
	x.statements.Add(1)
	x.renewals.Add(int64(n))
	seq := x.seq
	// Run waits for this goroutine: inflight counts it, and Run receives
	// its result before returning.
	go func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseRenewTimeout)
		defer cancel()
		grants, err := x.store.RenewLeases(rctx, x.holder, x.ttl, rs)

		x.results <- leaseBatch{seq: seq, outs: outs, grants: grants, err: err}
	}()
}

// deliver hands a batch's answers to the shards and notes whether the
// store is reachable.
func (x *Leaser) deliver(ctx context.Context, b leaseBatch) {
	x.inflight--
	if b.err != nil {
		x.failures.Add(1)
	}
	switch {
	case b.err == nil:
		if x.ls.down.Swap(false) {
			x.log.Info("store reachable again: leases renewed")
		}
	case errors.Is(b.err, messages.ErrUnavailable) || errors.Is(b.err, context.DeadlineExceeded):
		if !x.ls.down.Swap(true) {
			x.log.Warn("store unreachable: spending leases, then store_down_policy",
				"policy", x.ls.downPolicy, slog.Any("err", b.err))
		}
	default:
		x.log.Error("lease renewal failed", slog.Any("err", b.err))
	}
	byID := make(map[string]messages.LeaseGrant, len(b.grants))
	for _, g := range b.grants {
		byID[g.ClientID] = g
	}
	for i, outs := range b.outs {
		if len(outs) == 0 {
			continue
		}
		items := make([]leaseIn, len(outs))
		for j, o := range outs {
			g, found := byID[o.q.ClientID]
			items[j] = leaseIn{hash: o.hash, g: g, found: found}
		}
		reply := make(chan struct{}, 1)
		// A shard that stopped lost its leases with it: nothing to do.
		_, _ = ask(ctx, x.lim.shards[i], &leaseResultMsg{seq: b.seq, items: items, err: b.err, reply: reply}, reply)
	}
}

// release hands every lease back: shutdown.
func (x *Leaser) release(ctx context.Context) {
	x.seq++
	outs, n, err := x.lim.leaseCollect(ctx, &leaseCollectMsg{seq: x.seq, final: true})
	st := x.Stats()
	stats := []any{"statements", st.Statements, "renewals", st.Renewals,
		"decisions", st.Decisions, "waited", st.Waited}
	if err != nil {
		x.log.Error("leases not handed back", append(stats, slog.Any("err", err))...)
		return
	}
	rs := make([]messages.LeaseRenewal, 0, n)
	for _, o := range outs {
		for _, out := range o {
			rs = append(rs, out.q)
		}
	}
	if n > 0 {
		ctx, cancel := context.WithTimeout(ctx, x.flush)
		defer cancel()
		if _, err := x.store.RenewLeases(ctx, x.holder, x.ttl, rs); err != nil {
			x.log.Error("leases not handed back; they expire after lease_ttl",
				append(stats, "leases", n, slog.Any("err", err))...)
			return
		}
	}
	x.log.Info("leases handed back", append(stats, "leases", n)...)
}

// Stats returns the Leaser's counts since it was made; safe from any
// goroutine.
func (x *Leaser) Stats() messages.LeaseStats {
	return messages.LeaseStats{
		Statements:       x.statements.Load(),
		Renewals:         x.renewals.Load(),
		FailedStatements: x.failures.Load(),
		Decisions:        x.ls.decided.Load(),
		Waited:           x.ls.waited.Load(),
		StoreDown:        x.ls.down.Load(),
	}
}

// leaseCollect asks every shard for what is due; n counts the renewals.
func (l *Limiter) leaseCollect(ctx context.Context, m *leaseCollectMsg) (outs [][]leaseOut, n int, err error) {
	outs = make([][]leaseOut, len(l.shards))
	for i, s := range l.shards {
		reply := make(chan []leaseOut, 1)
		msg := *m
		msg.reply = reply
		o, err := ask(ctx, s, &msg, reply)
		if err != nil {
			return nil, 0, err
		}
		outs[i] = o
		n += len(o)
	}
	return outs, n, nil
}

// broadcast sends every shard a message nobody waits for; a shard whose
// queue is full misses it.
func (l *Limiter) broadcast(msg any) {
	for _, s := range l.shards {
		select {
		case s.ctlc <- msg:
		default:
		}
	}
}
