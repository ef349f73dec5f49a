package actors

import (
	"context"

	"github.com/tollgate/tollgate/messages"
)

// call is one request/reply round trip with an actor: it sends req on ch,
// then waits for the answer on reply. Both steps give up when ctx ends
// (ctx.Err()) or the actor has stopped (done closed: messages.ErrStopped),
// so no caller waits forever. reply must have a buffer of 1, so the actor
// never blocks on a caller that gave up. An actor answers what it took
// before it closes done, so an answer already given wins over done.
func call[Req, Rep any](ctx context.Context, done <-chan struct{}, ch chan<- Req, req Req, reply <-chan Rep) (Rep, error) {
	var zero Rep
	select {
	case ch <- req:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-done:
		return zero, messages.ErrStopped
	}
	select {
	case rep := <-reply:
		return rep, nil
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-done:
		select {
		case rep := <-reply:
			return rep, nil
		default:
			return zero, messages.ErrStopped
		}
	}
}
