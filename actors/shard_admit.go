package actors

import (
	"context"
	"sync/atomic"

	"github.com/tollgate/tollgate/messages"
)

// admitReq asks a shard to admit one request. It is the one message whose
// caller does not select on the shard's done channel (STYLE actors rule 4's
// exception, for the hottest path); what makes that safe:
//
//  1. At most two replies per request: "load" or "queued", then the
//     decision; or the decision alone. reply has a buffer of 2, so the
//     shard never blocks on a caller that gave up.
//  2. The shard closes done before its final drain (run's defers), and
//     answers every request it dequeues at once, or, behind a load, when
//     the load is done; a waiter behind a load watches done, since a
//     stopped shard answers no loads.
//  3. A sender that finds done closed after its send drains the queue
//     itself (enqueue): its request cannot be stranded after the final
//     drain.
//  4. A request goes back to the pool only once its last reply was
//     received; after an error or an abandonment it is left to the GC,
//     since a reply may still come.
//  5. A caller that gives up (its ctx ends) claims the request as
//     abandoned with a compare-and-swap on state; the shard claims it as
//     taken the same way before it takes a token. Only one wins: a request
//     abandoned first takes no token; one the shard took first is answered
//     at once, and the caller waits for that answer.
//  6. A request told to load stays taken until it has loaded: Limiter.load
//     releases it (or abandons it, for a caller already gone) just before
//     reporting loadDone, so a pending load is always reported and no key
//     is left waiting on a loader that went away.
//
// Each has a test in shard_admit_test.go (6: loader_quits_test.go).
type admitReq struct {
	hash  messages.KeyHash
	now   int64
	state atomic.Int32 // reqWaiting, reqTaken or reqAbandoned
	reply chan admitReply
}

// admitReq states.
const (
	reqWaiting   = iota // queued, or behind a load: the caller may give up
	reqTaken            // the shard is answering it
	reqAbandoned        // the caller gave up: no token, no answer
)

type admitReply struct {
	d   messages.Decision
	err error
	// load tells the caller it is the first to ask for an indexed but
	// uncached key: it must load the client and report with loadDone.
	load bool
	// queued tells the caller that another request is loading its client:
	// the decision follows when the load is done.
	queued bool
}

func newAdmitReq() any { return &admitReq{reply: make(chan admitReply, 2)} }

// claim takes r for answering, unless its caller abandoned it.
func (r *admitReq) claim() bool { return r.state.CompareAndSwap(reqWaiting, reqTaken) }

// release hands r back to its caller, who may give up on it again: before
// a "queued" reply, and by the loader once its load is done.
func (r *admitReq) release() { r.state.Store(reqWaiting) }

// abandon gives r up, unless the shard has taken it: then its answer is on
// the way and the caller must wait for it.
func (r *admitReq) abandon() bool { return r.state.CompareAndSwap(reqWaiting, reqAbandoned) }

// enqueue puts r on s's admission queue. Once it returns nil, r will be
// answered: by the loop, or with ErrStopped by whoever drains the queue of
// a stopped shard.
func (s *shard) enqueue(ctx context.Context, r *admitReq) error {
	select {
	case s.admitc <- r:
	default:
		select {
		case s.admitc <- r:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return messages.ErrStopped
		}
	}
	// The shard closes done before its last drain. If done is still open,
	// that drain comes after this send and answers r; if it is closed, the
	// drain may be over, so this caller drains: any request it takes gets
	// ErrStopped, and r has been taken by someone who answers it.
	select {
	case <-s.done:
		s.drainStopped()
	default:
	}
	return nil
}

// drainStopped answers every queued admission with ErrStopped. It runs
// after done is closed, in the shard and in late senders.
func (s *shard) drainStopped() {
	for {
		select {
		case r := <-s.admitc:
			r.reply <- admitReply{err: messages.ErrStopped}
		default:
			return
		}
	}
}

// drainAdmits answers the admissions already queued without going back
// through the loop's select, whose cost under load would otherwise be paid
// once per request. It is bounded so ticks and control messages still get
// their turn.
func (s *shard) drainAdmits() {
	for range cap(s.admitc) {
		select {
		case r := <-s.admitc:
			s.admit(r)
		default:
			return
		}
	}
}

func (s *shard) admit(r *admitReq) {
	if !r.claim() {
		return // its caller is gone: no token, no answer
	}
	if e, ok := s.cache[r.hash]; ok {
		if e.lz != nil {
			s.admitLeased(e, r, false)
			return
		}
		r.reply <- s.take(e, r.now)
		return
	}
	if _, ok := s.index[r.hash.Fingerprint()]; !ok {
		r.reply <- admitReply{err: messages.ErrUnknownKey}
		return
	}
	if p, ok := s.loading[r.hash]; ok {
		p.waiters = append(p.waiters, r)
		r.release()
		r.reply <- admitReply{queued: true}
		return
	}
	// The loader stays taken until it has loaded: a caller that could give
	// up now would leave the pending load behind, and with it every later
	// request for this key. Limiter.load releases it before reporting.
	s.loading[r.hash] = &pendingLoad{}
	r.reply <- admitReply{load: true}
}

func (s *shard) take(e *entry, now int64) admitReply {
	ok := e.b.take(now)
	if ok {
		e.dirty = true
	}
	e.seen = max(e.seen, now)
	d := e.b.decision(ok)
	d.ClientID = e.clientID
	return admitReply{d: d}
}

// loaded finishes a store load: the client is cached, then the loader and
// every waiter still waiting are admitted in the order they arrived. One
// that gave up meanwhile takes no token.
func (s *shard) loaded(m *loadDone) {
	p := s.loading[m.hash]
	delete(s.loading, m.hash)
	if p == nil { // cannot happen: one load per pending entry
		p = &pendingLoad{}
	}
	waiters := append([]*admitReq{m.loader}, p.waiters...)
	err := m.err
	if err == nil && (p.removed || m.client.KeyHash != m.hash) {
		err = messages.ErrUnknownKey
	}
	if err == nil {
		_, indexed := s.index[m.hash.Fingerprint()]
		if !indexed {
			err = messages.ErrUnknownKey
		}
	}
	if err != nil {
		for _, w := range waiters {
			if w.claim() {
				w.reply <- admitReply{err: err}
			}
		}
		return
	}
	e := s.cache[m.hash]
	if e == nil || e.clientID != m.client.ID || e.generation != m.client.Generation {
		e = s.installLoaded(m.client, p.updates)
	}
	for _, w := range waiters {
		if !w.claim() {
			continue
		}
		if e.lz != nil {
			s.admitLeased(e, w, true)
			continue
		}
		w.reply <- s.take(e, w.now)
	}
}

// installLoaded caches a client loaded from the store. A bucket of the
// same client evicted here and perhaps not saved yet is newer than the
// row: it is resumed instead. Admin changes that arrived during the load
// apply when newer than the row.
func (s *shard) installLoaded(c messages.Client, updates []messages.Client) *entry {
	now := s.cfg.clk.now()
	b, version := s.cfg.clk.bucket(c, now), c.Version
	ev := s.unevict(c.KeyHash, c.ID)
	if ev != nil && ev.generation != c.Generation {
		ev = nil // a client since deleted: its state goes nowhere
	}
	if ev != nil {
		b, version = ev.b, ev.version
		applyLimits(&b, &version, c, now)
	}
	for _, u := range updates {
		if u.Generation == c.Generation {
			applyLimits(&b, &version, u, now)
		}
	}
	e := s.install(c, b, now)
	e.version = version
	if ev != nil {
		e.dirty, e.handed = ev.dirty, ev.handed
	}
	return e
}
