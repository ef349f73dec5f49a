package actors

import (
	"time"

	"github.com/tollgate/tollgate/messages"
)

// clock is bucket time: nanoseconds since the Limiter was made, read from
// the monotonic clock, so a wall-clock step (NTP, a VM resumed) neither
// freezes refill nor over-fills a bucket. Wall-clock time is only for what
// is stored or shown: a stored last_refill converts to bucket time when a
// client is loaded, and back when its state is saved or shown.
type clock struct {
	epoch time.Time // with its monotonic reading
	wall  time.Time // epoch without it: the wall time bucket time 0 stands for
}

func newClock() clock {
	now := time.Now()
	return clock{epoch: now, wall: now.Round(0)}
}

// base is the wall time bucket time 0 stands for. The zero clock, for
// tests of shards alone, counts bucket time from the Unix epoch.
func (c clock) base() time.Time {
	if c.wall.IsZero() {
		return time.Unix(0, 0)
	}
	return c.wall
}

// now is the current bucket time.
func (c clock) now() int64 { return int64(time.Since(c.epoch)) }

// at is the bucket time of t, a time.Now() reading of this process (such
// as a ticker's): its monotonic reading is used.
func (c clock) at(t time.Time) int64 { return int64(t.Sub(c.epoch)) }

// toWall is the wall-clock time standing for bucket time m.
func (c clock) toWall(m int64) time.Time { return c.base().Add(time.Duration(m)).UTC() }

// bucket makes the bucket of a stored client as of bucket time now. A
// last_refill in the future (saved by an instance whose clock runs ahead,
// or before a step back) counts as now; it is kept as the bucket's stamp
// so the bucket's saves never carry an older last_refill than the one
// stored.
func (c clock) bucket(cl messages.Client, now int64) bucket {
	b := newBucket(cl)
	b.last = min(now, int64(cl.LastRefill.Sub(c.base())))
	if cl.LastRefill.After(time.Unix(0, 0)) { // UnixNano is undefined far before
		b.stamp = cl.LastRefill.UnixNano()
	}
	return b
}

// state is b as a saved BucketState: its last refill in wall-clock time,
// never before the stamp it was loaded with.
func (c clock) state(clientID string, b *bucket) messages.BucketState {
	st := b.state(clientID)
	st.LastRefill = c.toWall(b.last)
	if st.LastRefill.UnixNano() < b.stamp {
		st.LastRefill = time.Unix(0, b.stamp).UTC()
	}
	return st
}
