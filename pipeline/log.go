package pipeline

import (
	"log/slog"
	"net/http"
	"time"
)

// logAccess writes the request's line: at the access level (debug, or
// info with AccessLog) when it went through, at warn when the client got
// a 5xx, at error when the fault was Tollgate's own. API keys never appear.
func (p *Pipeline) logAccess(x *exchange) {
	level, msg := p.accessLevel, "request"
	switch {
	case x.status == http.StatusInternalServerError && x.err != nil:
		level, msg = slog.LevelError, "request failed"
	case x.status >= 500 && x.status != statusClientClosed:
		level, msg = slog.LevelWarn, "request failed"
	case x.status == statusClientClosed:
		msg = "client closed request"
	}
	ctx := x.in.Context()
	if !p.logger.Enabled(ctx, level) {
		return
	}
	attrs := [10]slog.Attr{
		slog.String("request_id", x.requestID()),
		slog.String("client_id", x.clientID()),
		slog.String("method", x.in.Method),
		slog.String("path", x.in.URL.Path),
		slog.Int("status", x.status),
		slog.String("backend", x.backend),
		slog.Int("attempts", x.attempts),
		slog.Duration("duration", time.Since(x.start)),
		slog.Int64("bytes", x.bytes+x.body.n),
	}
	n := 9
	if x.err != nil {
		attrs[n] = slog.Any("err", x.err)
		n++
	}
	p.logger.LogAttrs(ctx, level, msg, attrs[:n]...)
}
