package config

import (
	"fmt"
	"os"
	"time"
)

// Defaults for fields the file leaves out. Only port and
// load_balancer.backend_urls are required: without them there is nothing to
// listen on or forward to. Every other seed field defaults to the value in
// SPEC 2's example, except log_level: the example's "debug" suits a demo, and
// a file that says nothing gets the quieter "info". Optional fields take their
// documented defaults; health_check_timeout defaults to
// min(request_timeout, health_check_interval).
const (
	defaultLogLevel            = "info"
	defaultStateFile           = "tollgate.db"
	defaultShutdownTimeout     = 10 * time.Second
	defaultDBConnectTimeout    = 30 * time.Second
	defaultHealthCheckInterval = 10 * time.Second
	defaultHealthCheckWorkers  = 2
	defaultHealthCheckPath     = "/health"
	defaultMaxRetries          = 2
	defaultRequestTimeout      = 2 * time.Second
	defaultMaxRetryBodyBytes   = 1 << 20
	defaultMaxRetryBufferBytes = 64 << 20
	defaultAddTokensInterval   = 5 * time.Second
	defaultSaveStateInterval   = 10 * time.Second
	defaultRemoveStaleInterval = 300 * time.Second
	defaultRatePerSec          = 5
	defaultCapacity            = 20
	defaultCacheTTL            = 300 * time.Second
	defaultLeaseTTL            = 5 * time.Second
)

// Environment variables that override the file, so secrets need not be
// written into it. An empty variable counts as unset.
const (
	EnvDatabaseURL = "DATABASE_URL"
	EnvAdminKey    = "TOLLGATE_ADMIN_KEY"
)

func defaults() *Config {
	return &Config{
		LogLevel:               defaultLogLevel,
		StateFile:              defaultStateFile,
		ShutdownTimeout:        defaultShutdownTimeout,
		DatabaseConnectTimeout: defaultDBConnectTimeout,
		LoadBalancer: LoadBalancer{
			HealthCheckInterval:    defaultHealthCheckInterval,
			HealthCheckWorkerCount: defaultHealthCheckWorkers,
			HealthCheckPath:        defaultHealthCheckPath,
			HealthyThreshold:       1,
			UnhealthyThreshold:     1,
			MaxRetries:             defaultMaxRetries,
			RequestTimeout:         defaultRequestTimeout,
			MaxRetryBodyBytes:      defaultMaxRetryBodyBytes,
			MaxRetryBufferBytes:    defaultMaxRetryBufferBytes,
			Policy:                 PolicyRoundRobin,
			Outlier:                defaultOutlier(),
			RetryBudget:            defaultRetryBudget(),
		},
		RateLimiter: RateLimiter{
			AddTokensInterval:   defaultAddTokensInterval,
			SaveStateInterval:   defaultSaveStateInterval,
			RemoveStaleInterval: defaultRemoveStaleInterval,
			DefaultRatePerSec:   defaultRatePerSec,
			DefaultCapacity:     defaultCapacity,
			CacheTTL:            defaultCacheTTL,
			LeaseTTL:            defaultLeaseTTL,
			StoreDownPolicy:     StoreDownSafe,
		},
	}
}

// Load reads the configuration file at path, applies the environment
// overrides from the process environment and validates the result. Every
// error it returns is a configuration error (see IsConfigError); a missing
// file wraps fs.ErrNotExist.
func Load(path string) (*Config, error) {
	return LoadWithEnv(path, os.Getenv)
}

// LoadWithEnv is Load with the environment read through getenv, so tests
// need not touch the process environment. A nil getenv applies no overrides.
func LoadWithEnv(path string, getenv func(string) string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", &Error{Msg: err.Error(), Err: err})
	}
	c, err := parse(data, getenv)
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates a configuration document without consulting
// the environment. It reports every problem it finds, each naming its JSON
// path; errors are configuration errors as for Load.
func Parse(data []byte) (*Config, error) {
	c, err := parse(data, nil)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// parse validates only a document that decoded cleanly: checking the values
// of a half-read one would report defaults standing in for the bad fields.
func parse(data []byte, getenv func(string) string) (*Config, error) {
	c, p := decode(data)
	if len(p) > 0 {
		return nil, p.err()
	}
	if getenv != nil {
		if v := getenv(EnvDatabaseURL); v != "" {
			c.DatabaseURL = v
		}
		if v := getenv(EnvAdminKey); v != "" {
			c.AdminAPIKey = v
		}
	}
	if p := c.check(); len(p) > 0 {
		return nil, p.err()
	}
	c.normalize()
	return c, nil
}
