// Package config loads and validates Tollgate's JSON configuration
// (SPEC 2): the seed's format, durations as decimal seconds, optional
// fields with defaults, environment overrides, unknown fields refused.
// Every validation error names the JSON path and the bad value.
package config

import "time"

// Config is a loaded, defaulted and validated configuration.
type Config struct {
	Port            int
	AdminPort       int
	LogLevel        string // debug, info, warn, error
	LogFile         string // "" means stdout
	DatabaseURL     string // "" means the embedded store
	StateFile       string
	AdminAPIKey     string
	ShutdownTimeout time.Duration
	// DatabaseConnectTimeout is how long start-up retries an unreachable
	// PostgreSQL before giving up.
	DatabaseConnectTimeout time.Duration
	AccessLog              bool
	// Pprof serves net/http/pprof under /debug/pprof/ on the admin API,
	// behind its authentication.
	Pprof bool
	// TLSCertFile and TLSKeyFile (PEM) make the main and admin ports speak
	// TLS; both empty means plain HTTP.
	TLSCertFile  string
	TLSKeyFile   string
	LoadBalancer LoadBalancer
	RateLimiter  RateLimiter
}

// LoadBalancer configures backends, health checks, balancing and retries.
type LoadBalancer struct {
	// BackendURLs lists the backends, from backend_urls or from the urls
	// of backends.
	BackendURLs []string
	// Weights holds the weight of each backend of BackendURLs when the
	// file used backends; nil means every weight is 1. See Weight.
	Weights []int
	// Policy is PolicyRoundRobin (also when "") or PolicyLeastRequest.
	Policy string
	// CAFile (PEM) adds trusted roots for https backends to the system's.
	CAFile                 string
	Outlier                Outlier
	RetryBudget            RetryBudget
	HealthCheckInterval    time.Duration
	HealthCheckWorkerCount int
	HealthCheckPath        string
	HealthCheckTimeout     time.Duration
	HealthyThreshold       int
	UnhealthyThreshold     int
	MaxRetries             int
	RequestTimeout         time.Duration
	MaxRetryBodyBytes      int64
	// MaxRetryBufferBytes caps the request body bytes held in memory for
	// retries across all requests in flight
	// (load_balancer.max_retry_buffer_bytes); past it, bodies stream
	// without retry. 0 holds none.
	MaxRetryBufferBytes int64

	fromBackends bool // the file used backends, not backend_urls
}

// RateLimiter configures buckets, caching and persistence.
type RateLimiter struct {
	AddTokensInterval   time.Duration
	SaveStateInterval   time.Duration
	RemoveStaleInterval time.Duration
	DefaultRatePerSec   float64
	DefaultCapacity     int64
	CacheTTL            time.Duration // cache.time_to_live
	HashAPIKeys         bool
	// LeaseTTL is how long a lease on a shared bucket outlives its last
	// renewal (PostgreSQL only, SPEC 9).
	LeaseTTL time.Duration
	// StoreDownPolicy is what a shared bucket does once the store is
	// unreachable and its lease is spent: StoreDownSafe, StoreDownClosed
	// or StoreDownOpen.
	StoreDownPolicy string
}

// Values of RateLimiter.StoreDownPolicy.
const (
	StoreDownSafe   = "safe"   // admit from this instance's share of the bucket
	StoreDownClosed = "closed" // refuse with 503
	StoreDownOpen   = "open"   // admit everything
)
