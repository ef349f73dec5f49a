package persist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/tollgate/tollgate/messages"
)

// A client record in the bolt "clients" bucket, keyed by client id.
// Little-endian, fixed fields first so SaveStates patches tokens and
// last_refill in place without decoding:
//
//	[0]      format version (recordV2; recordV1 lacks [65:81])
//	[1:9]    rate_per_sec, float64 bits
//	[9:17]   capacity, int64
//	[17:25]  tokens, float64 bits
//	[25:33]  last_refill, Unix microseconds
//	[33:65]  key hash
//	[65:73]  generation, int64
//	[73:81]  version, int64
//	[81:]    uvarint length + key prefix, uvarint length + api key ("" when
//	         hashed at rest)
//
// A recordV1 (written before generations) reads as generation 0, version
// 1, and is written back as recordV2 by the next admin change.
const (
	recordV1    = 1
	recordV2    = 2
	offRate     = 1
	offCapacity = 9
	offTokens   = 17
	offRefill   = 25
	offHash     = 33
	fixedLen    = 65
	offGen      = 65
	offVersion  = 73
	fixedLenV2  = 81
)

var errCorrupt = errors.New("corrupt record")

func encodeRecord(c messages.Client) []byte {
	b := make([]byte, fixedLenV2, fixedLenV2+2*binary.MaxVarintLen16+len(c.KeyPrefix)+len(c.APIKey))
	b[0] = recordV2
	binary.LittleEndian.PutUint64(b[offRate:], math.Float64bits(c.RatePerSec))
	binary.LittleEndian.PutUint64(b[offCapacity:], uint64(c.Capacity))
	putState(b, c.Tokens, c.LastRefill)
	copy(b[offHash:fixedLen], c.KeyHash[:])
	binary.LittleEndian.PutUint64(b[offGen:], uint64(c.Generation))
	binary.LittleEndian.PutUint64(b[offVersion:], uint64(c.Version))
	b = binary.AppendUvarint(b, uint64(len(c.KeyPrefix)))
	b = append(b, c.KeyPrefix...)
	b = binary.AppendUvarint(b, uint64(len(c.APIKey)))
	return append(b, c.APIKey...)
}

// putState writes the bucket state fields of record b in place.
func putState(b []byte, tokens float64, lastRefill time.Time) {
	binary.LittleEndian.PutUint64(b[offTokens:], math.Float64bits(tokens))
	binary.LittleEndian.PutUint64(b[offRefill:], uint64(lastRefill.UnixMicro()))
}

func recordCapacity(b []byte) int64 {
	return int64(binary.LittleEndian.Uint64(b[offCapacity:]))
}

func recordLastRefill(b []byte) time.Time {
	return time.UnixMicro(int64(binary.LittleEndian.Uint64(b[offRefill:])))
}

func recordRate(b []byte) float64 {
	return math.Float64frombits(binary.LittleEndian.Uint64(b[offRate:]))
}

// recordVersion is the version of a record of any format version.
func recordVersion(b []byte) int64 {
	if b[0] == recordV1 {
		return 1
	}
	return int64(binary.LittleEndian.Uint64(b[offVersion:]))
}

// recordGeneration is the generation of a record of any format version.
func recordGeneration(b []byte) int64 {
	if b[0] == recordV1 {
		return 0
	}
	return int64(binary.LittleEndian.Uint64(b[offGen:]))
}

// decodeRecord copies what it needs out of b, which may be bolt's memory.
func decodeRecord(id string, b []byte) (messages.Client, error) {
	if !validRecord(b) {
		return messages.Client{}, fmt.Errorf("client %q: %w", id, errCorrupt)
	}
	c := messages.Client{
		ID:         id,
		RatePerSec: recordRate(b),
		Capacity:   recordCapacity(b),
		Tokens:     math.Float64frombits(binary.LittleEndian.Uint64(b[offTokens:])),
		LastRefill: recordLastRefill(b).UTC(),
		Generation: recordGeneration(b),
		Version:    recordVersion(b),
	}
	copy(c.KeyHash[:], b[offHash:fixedLen])
	rest := b[fixedLen:]
	if b[0] == recordV2 {
		rest = b[fixedLenV2:]
	}
	var ok bool
	if c.KeyPrefix, rest, ok = readString(rest); !ok {
		return messages.Client{}, fmt.Errorf("client %q: key prefix: %w", id, errCorrupt)
	}
	if c.APIKey, rest, ok = readString(rest); !ok || len(rest) != 0 {
		return messages.Client{}, fmt.Errorf("client %q: api key: %w", id, errCorrupt)
	}
	return c, nil
}

// validRecord reports whether b has the fixed part of its format version.
func validRecord(b []byte) bool {
	switch {
	case len(b) == 0:
		return false
	case b[0] == recordV1:
		return len(b) >= fixedLen
	case b[0] == recordV2:
		return len(b) >= fixedLenV2
	}
	return false
}

// readString reads a uvarint length and that many bytes.
func readString(b []byte) (s string, rest []byte, ok bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return "", nil, false
	}
	return string(b[w : w+int(n)]), b[w+int(n):], true
}
