package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Error is one problem with a configuration. Every error returned by Load,
// LoadWithEnv, Parse and Validate wraps at least one *Error, so callers can
// tell a bad configuration (exit code 2) from other failures with
// IsConfigError or errors.As; when several problems are found, errors.As
// yields the first.
type Error struct {
	// Path is the JSON path of the offending field, such as
	// "load_balancer.backend_urls[1]"; it is empty for problems with the
	// document as a whole (unreadable file, malformed JSON).
	Path string
	// Msg says what is wrong, quoting the bad value.
	Msg string
	// Err is the underlying cause, such as an *fs.PathError, or nil.
	Err error
}

func (e *Error) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// IsConfigError reports whether err, or any error it wraps, is an *Error.
func IsConfigError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// problems collects every problem found in one configuration, so an operator
// fixes them in one round rather than one per restart.
type problems []*Error

func (p *problems) addf(path, format string, args ...any) {
	*p = append(*p, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// err returns nil, the single problem, or all of them as one error.
func (p problems) err() error {
	switch len(p) {
	case 0:
		return nil
	case 1:
		return p[0]
	}
	return p
}

// Error joins the problems with "; " to keep the message on one log line.
func (p problems) Error() string {
	msgs := make([]string, len(p))
	for i, e := range p {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

func (p problems) Unwrap() []error {
	errs := make([]error, len(p))
	for i, e := range p {
		errs[i] = e
	}
	return errs
}

// documentError describes why data could not be read as a JSON object,
// giving the line and column of a syntax error.
func documentError(data []byte, err error) *Error {
	var syntax *json.SyntaxError
	switch {
	case len(bytes.TrimSpace(data)) == 0:
		return &Error{Msg: "empty document, want a JSON object", Err: err}
	case errors.As(err, &syntax):
		line, col := position(data, syntax.Offset)
		return &Error{Msg: fmt.Sprintf("line %d, column %d: %v", line, col, syntax), Err: err}
	default:
		return &Error{Msg: "the document must be a JSON object", Err: err}
	}
}

// position converts a json.SyntaxError offset, the count of bytes read
// including the offending one, into a 1-based line and column (in runes).
func position(data []byte, offset int64) (line, col int) {
	at := int(min(max(offset-1, 0), int64(len(data))))
	before := data[:at]
	line = 1 + bytes.Count(before, []byte("\n"))
	col = 1 + utf8.RuneCount(before[bytes.LastIndexByte(before, '\n')+1:])
	return line, col
}

// show renders a raw JSON value for an error message: compact, and cut short
// so a misplaced object cannot flood the log.
func show(raw json.RawMessage) string {
	const limit = 40
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		b.Reset()
		b.Write(raw)
	}
	s := b.String()
	if len(s) > limit {
		s = strings.ToValidUTF8(s[:limit], "") + "..."
	}
	return s
}
