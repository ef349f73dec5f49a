// Package messages is the vocabulary shared by Tollgate's actors, stores and
// HTTP surfaces: value types such as Client and Decision, and the sentinel
// errors callers branch on. It holds data only, no behaviour beyond small
// pure helpers, and imports nothing but the standard library.
package messages

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/url"
	"sync/atomic"
	"time"
)

// Sentinel errors. Stores, actors and handlers wrap them with %w; callers
// test with errors.Is. httpapi maps each to one HTTP status.
var (
	// ErrNotFound: no client with that id or key.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the client_id or api_key is already taken.
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the store cannot be reached; nothing was changed.
	ErrUnavailable = errors.New("store unavailable")
	// ErrStopped: the actor has shut down and takes no more requests.
	ErrStopped = errors.New("stopped")
	// ErrUnknownKey: the API key belongs to no client.
	ErrUnknownKey = errors.New("unknown api key")
	// ErrNoBackend: no backend is healthy.
	ErrNoBackend = errors.New("no healthy backend")
)

// KeyHash is the SHA-256 of an API key. With hash_api_keys the store keeps
// only this; in every mode it is how a key is looked up.
type KeyHash [sha256.Size]byte

// HashKey returns the SHA-256 of an API key. It runs on every request:
// keys of ordinary length are copied into a stack buffer, since converting
// a string of more than 32 bytes to []byte allocates.
func HashKey(apiKey string) KeyHash {
	var buf [128]byte
	if len(apiKey) <= len(buf) {
		return sha256.Sum256(append(buf[:0], apiKey...))
	}
	return sha256.Sum256([]byte(apiKey))
}

// Fingerprint is the 64-bit prefix of a KeyHash: what the in-memory key
// index holds for every client, so unknown keys are refused without a store
// query.
func (h KeyHash) Fingerprint() uint64 { return binary.LittleEndian.Uint64(h[:8]) }

// KeyPrefixLen is how many leading characters of a key are shown in place
// of the key when keys are hashed at rest.
const KeyPrefixLen = 6

// KeyPrefix is the part of a key shown in place of it when keys are hashed
// at rest.
func KeyPrefix(apiKey string) string {
	if len(apiKey) > KeyPrefixLen {
		return apiKey[:KeyPrefixLen]
	}
	return apiKey
}

// Client is one API client: its identity, its limits and its bucket state
// as of LastRefill.
type Client struct {
	ID string
	// APIKey is the key in clear; empty when the store keeps only KeyHash.
	APIKey     string
	KeyHash    KeyHash
	KeyPrefix  string // first KeyPrefixLen characters of the key
	RatePerSec float64
	Capacity   int64
	Tokens     float64
	LastRefill time.Time
	// Generation tells apart clients that had the same id: it is chosen
	// when the client is created and never changes, so a state saved from
	// one client never lands on another created later with its id.
	Generation int64
	// Version counts the admin changes to the client: 1 when created,
	// one more with each change of its limits or key. A cache holding
	// version v ignores limits of a version <= v.
	Version int64
}

// BucketState is the mutable part of a client, what the persistence actor
// saves in batches.
type BucketState struct {
	ClientID   string
	Tokens     float64
	LastRefill time.Time
	// Generation is the client's the state was taken from: a store saves
	// it only onto the client of that generation.
	Generation int64
	// KeyHash is the key the bucket was cached under, so a confirmation
	// of the save finds it again. Stores ignore it.
	KeyHash KeyHash
}

// KeyRef ties a client to its key hash and limits: the key index is built
// from these, and a resync brings cached limits up to date with them.
type KeyRef struct {
	ClientID   string
	KeyHash    KeyHash
	RatePerSec float64
	Capacity   int64
	Generation int64
	Version    int64
}

// Limits is a change of a client's limits; a nil field is left as it is.
type Limits struct {
	RatePerSec *float64
	Capacity   *int64
	// At is when the change takes effect: the stored bucket first refills
	// at the old rate up to At (a stored last_refill after At counts as
	// At), so a change applies the same whether the client is cached or
	// not. Zero skips the refill.
	At time.Time
}

// ApplyTo changes c's limits as a store does: the bucket refills to l.At
// at the old rate, then the tokens it holds shrink to a lower capacity (a
// NaN count becomes full); a higher one leaves them.
func (l Limits) ApplyTo(c *Client) {
	if !l.At.IsZero() && l.At.After(c.LastRefill) {
		if capacity := float64(c.Capacity); c.Tokens < capacity {
			c.Tokens = min(capacity, c.Tokens+l.At.Sub(c.LastRefill).Seconds()*c.RatePerSec)
		}
		c.LastRefill = l.At
	}
	if l.RatePerSec != nil {
		c.RatePerSec = *l.RatePerSec
	}
	if l.Capacity != nil {
		c.Capacity = *l.Capacity
	}
	if capacity := float64(c.Capacity); !(c.Tokens <= capacity) {
		c.Tokens = capacity
	}
}

// Decision is the answer to one admission request, carrying what the
// response headers of SPEC 3 step 2 need.
type Decision struct {
	ClientID string
	Allowed  bool
	// Limit is the bucket capacity.
	Limit int64
	// Remaining is the whole tokens left after this request.
	Remaining int64
	// RetryAfter is the time until one token is available (0 when allowed).
	RetryAfter time.Duration
	// ResetAfter is the time until the bucket is full again.
	ResetAfter time.Duration
	// Window is ceil(capacity/rate) seconds, the policy window.
	Window time.Duration
}

// Backend is one upstream server. Values are immutable once published; the
// registry hands out snapshots of them and the pipeline forwards to URL.
type Backend struct {
	// ID is unique for the process's lifetime: a backend keeps it while it
	// stays configured, and one removed and added again gets a new one.
	ID  int
	URL *url.URL
	// Weight is the backend's share of first attempts, 1..100; 0 counts
	// as 1.
	Weight int
	// Load is the backend's live counters, shared by every snapshot that
	// holds the backend; nil for a Backend not made by the registry, and
	// then nothing is counted.
	Load *BackendLoad
}

// BackendLoad is what the request path counts of one backend, with
// atomics, without a round trip to the registry.
type BackendLoad struct {
	// InFlight is the attempts on the backend now; least_request reads it.
	InFlight atomic.Int64
	// Failures is the backend's failed answers in a row (502, 503, 504 or
	// a timeout), for outlier detection.
	Failures atomic.Int64
}

// BackendStatus is what GET /backends shows of one backend.
type BackendStatus struct {
	URL                  string
	Healthy              bool
	LastCheck            time.Time // zero before the first probe
	LastError            string    // "" when the last probe passed
	LastStatus           int       // HTTP status of the last probe, 0 if none
	LastLatency          time.Duration
	ConsecutiveFailures  int
	ConsecutiveSuccesses int
	Since                time.Time // when Healthy last changed
	Weight               int
	// EjectedUntil is when an outlier ejection ends (the backend returns
	// once a probe passes after it); zero when not ejected.
	EjectedUntil  time.Time
	EjectedReason string // why it was ejected; "" when not ejected
	Ejections     int    // times ejected since it was configured
}

// Change is an admin change to a client as the store reports it to every
// instance sharing it (PostgreSQL LISTEN/NOTIFY), or a request to resync.
type Change struct {
	// Resync means changes may have been missed: reload the key index.
	// DropCache also drops cached clients, whose limits may be stale.
	Resync    bool
	DropCache bool

	Deleted  bool
	ClientID string
	KeyHash  KeyHash // the client's key; for a delete, the key it had
	// OldKeyHash is the key before a rotation; zero when the key did not
	// change.
	OldKeyHash KeyHash
	RatePerSec float64
	Capacity   int64
	// Generation and Version are the client's after the change (for a
	// delete, as it was).
	Generation int64
	Version    int64
}
