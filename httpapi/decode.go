package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxBodyBytes bounds an admin request body (SPEC 4: 413 above 1 MiB).
const maxBodyBytes = 1 << 20

// clientFields are the fields a client write may carry, each already
// checked against SPEC 4's rules. A nil field was absent or null.
type clientFields struct {
	ID       *string
	Rate     *float64
	Capacity *int64
	APIKey   *string
}

// knownFields are the body fields of client writes. Matching is exact:
// encoding/json's case-insensitive field matching would take "Client_ID".
var knownFields = map[string]bool{
	"client_id": true, "rate_per_sec": true, "capacity": true, "api_key": true,
}

// readBody checks the Content-Type and reads at most maxBodyBytes of the
// body. requireJSONBody has refused a body without Content-Type already;
// an empty body may come without one, and then fails to decode (400).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return nil, &requestError{kind: errTooLarge, msg: "request body is larger than 1 MiB"}
	}
	if err != nil {
		return nil, badRequest("reading request body: %v", err)
	}
	return data, nil
}

// checkContentType accepts no Content-Type, application/json and
// application/*+json (such as merge-patch+json), with charset utf-8 if any.
func checkContentType(value string) error {
	if value == "" {
		return nil
	}
	mediaType, params, err := mime.ParseMediaType(value)
	isJSON := mediaType == "application/json" ||
		strings.HasPrefix(mediaType, "application/") && strings.HasSuffix(mediaType, "+json")
	if err != nil || !isJSON {
		return &requestError{kind: errUnsupportedMedia,
			msg: fmt.Sprintf("Content-Type %.100q is not supported: send application/json", value)}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return &requestError{kind: errUnsupportedMedia,
			msg: fmt.Sprintf("charset %.40q is not supported: send utf-8", cs)}
	}
	return nil
}

// decodeCreate decodes and checks the body of POST /clients.
func decodeCreate(data []byte) (clientFields, error) {
	f, err := decodeClientFields(data)
	if err != nil {
		return clientFields{}, err
	}
	if f.ID == nil {
		return clientFields{}, badRequest("client_id: is required")
	}
	return f, nil
}

// decodePatch decodes and checks the body of PATCH /clients[/{id}]. The
// client_id, when present, is checked by the caller against the path.
func decodePatch(data []byte) (clientFields, error) {
	f, err := decodeClientFields(data)
	if err != nil {
		return clientFields{}, err
	}
	if f.APIKey != nil {
		return clientFields{}, badRequest("api_key: cannot be changed by PATCH; use POST /clients/{client_id}/rotate-key")
	}
	if f.Rate == nil && f.Capacity == nil {
		return clientFields{}, badRequest("at least one of rate_per_sec and capacity is required")
	}
	return f, nil
}

// decodeClientFields decodes one JSON object of knownFields and checks
// each present field. It is pure, so it is fuzzed directly.
func decodeClientFields(data []byte) (clientFields, error) {
	raw, err := decodeObject(data)
	if err != nil {
		return clientFields{}, err
	}
	var f clientFields
	if f.ID, err = stringField(raw, "client_id"); err != nil {
		return clientFields{}, err
	}
	if f.ID != nil {
		if err := validateClientID("client_id", *f.ID); err != nil {
			return clientFields{}, err
		}
	}
	if f.APIKey, err = stringField(raw, "api_key"); err != nil {
		return clientFields{}, err
	}
	if f.APIKey != nil {
		if err := validateAPIKey(*f.APIKey); err != nil {
			return clientFields{}, err
		}
	}
	if f.Rate, err = rateField(raw); err != nil {
		return clientFields{}, err
	}
	if f.Capacity, err = capacityField(raw); err != nil {
		return clientFields{}, err
	}
	return f, nil
}

// decodeObject splits a body holding exactly one JSON object into its
// fields' raw values. It refuses invalid UTF-8 (encoding/json would quietly
// turn it into U+FFFD), unknown and repeated fields, and trailing data.
// Nesting deeper than encoding/json's limit is a syntax error.
func decodeObject(data []byte) (map[string]json.RawMessage, error) {
	if i := invalidUTF8At(data); i >= 0 {
		return nil, badRequest("request body is not valid UTF-8 (at byte %d)", i)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, syntaxError(data, dec, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, badRequest("request body must be a JSON object")
	}
	fields := make(map[string]json.RawMessage, len(knownFields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, syntaxError(data, dec, err)
		}
		name, _ := tok.(string) // inside an object, Token yields keys as strings
		if !knownFields[name] {
			return nil, badRequest("unknown field %.64q", name)
		}
		if _, dup := fields[name]; dup {
			return nil, badRequest("field %q appears twice", name)
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, syntaxError(data, dec, err)
		}
		fields[name] = value
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, syntaxError(data, dec, err)
	}
	end := dec.InputOffset()
	if rest := bytes.TrimLeft(data[end:], " \t\r\n"); len(rest) > 0 {
		return nil, badRequest("unexpected data after the JSON object at %s", position(data, len(data)-len(rest)))
	}
	return fields, nil
}

// syntaxError describes a decoding failure with its place in the body.
func syntaxError(data []byte, dec *json.Decoder, err error) error {
	if errors.Is(err, io.EOF) && len(bytes.TrimSpace(data)) == 0 {
		return badRequest("request body is empty: expected a JSON object")
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return badRequest("malformed JSON: unexpected end of input at %s", position(data, len(data)))
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		msg := strings.TrimPrefix(se.Error(), "json: ")
		return badRequest("malformed JSON at %s: %s", position(data, int(se.Offset)), msg)
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	return badRequest("malformed JSON at %s: %s", position(data, int(dec.InputOffset())), msg)
}

// position names a byte offset as line and column (1-based, in bytes).
func position(data []byte, offset int) string {
	offset = min(max(offset, 0), len(data))
	before := data[:offset]
	line := bytes.Count(before, []byte{'\n'}) + 1
	col := offset - bytes.LastIndexByte(before, '\n')
	return fmt.Sprintf("line %d, column %d", line, col)
}

// invalidUTF8At returns the offset of the first invalid UTF-8 byte, or -1.
func invalidUTF8At(data []byte) int {
	if utf8.Valid(data) {
		return -1
	}
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return -1
}

// stringField returns field name as a string; null is absent.
func stringField(raw map[string]json.RawMessage, name string) (*string, error) {
	v, ok := raw[name]
	if !ok || string(v) == "null" {
		return nil, nil
	}
	if v[0] != '"' {
		return nil, badRequest("%s: must be a string, got %s", name, kindOf(v))
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, badRequest("%s: %s", name, strings.TrimPrefix(err.Error(), "json: "))
	}
	return &s, nil
}

// numberField returns field name as a float64; null is absent. Numbers
// beyond float64's range (1e400) are refused, not rounded to infinity.
func numberField(raw map[string]json.RawMessage, name string) (*float64, error) {
	v, ok := raw[name]
	if !ok || string(v) == "null" {
		return nil, nil
	}
	if v[0] != '-' && (v[0] < '0' || v[0] > '9') {
		return nil, badRequest("%s: must be a number, got %s", name, kindOf(v))
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil {
		return nil, badRequest("%s: number %.40s is out of range", name, v)
	}
	return &f, nil
}

func rateField(raw map[string]json.RawMessage) (*float64, error) {
	rate, err := numberField(raw, "rate_per_sec")
	if err != nil || rate == nil {
		return nil, err
	}
	if err := validateRate(*rate); err != nil {
		return nil, err
	}
	return rate, nil
}

func capacityField(raw map[string]json.RawMessage) (*int64, error) {
	f, err := numberField(raw, "capacity")
	if err != nil || f == nil {
		return nil, err
	}
	capacity, err := validateCapacity(*f)
	if err != nil {
		return nil, err
	}
	return &capacity, nil
}

// kindOf names the JSON type of a raw value for error messages.
func kindOf(v json.RawMessage) string {
	switch v[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}
