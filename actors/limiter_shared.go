package actors

import (
	"context"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// overlayShared sets the tokens of clients whose buckets are shared: the
// row's tokens plus the unspent leased tokens as last reported (SPEC 9),
// as of now, never above capacity (a lowered capacity shrinks leases only
// at their next renewal). Without shared buckets it does nothing.
func (l *Limiter) overlayShared(ctx context.Context, cs []messages.Client) error {
	if l.shared == nil || len(cs) == 0 {
		return nil
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	tokens, err := l.shared.Store.SharedTokens(ctx, ids)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	for i := range cs {
		if t, ok := tokens[cs[i].ID]; ok {
			cs[i].Tokens = min(t, float64(cs[i].Capacity))
			cs[i].LastRefill = now
		}
	}
	return nil
}
