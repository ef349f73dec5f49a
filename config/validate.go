package config

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limits beyond which a value is surely a mistake rather than a choice.
const (
	maxMaxRetries      = 100
	maxWorkers         = 1000
	maxRatePerSec      = 1e6
	maxDefaultCapacity = 1e9
)

var logLevels = []string{"debug", "info", "warn", "error"}

// Validate checks c as Load and Parse do, for a Config built by hand (in
// tests, say). It reports every problem, each naming its JSON path.
func (c *Config) Validate() error {
	if err := c.check().err(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

func (c *Config) check() problems {
	var p problems
	between(&p, "port", c.Port, 1, 65535)
	if c.AdminPort != 0 {
		if c.AdminPort < 0 || c.AdminPort > 65535 {
			p.addf("admin_port", "%d must be 0 or between 1 and 65535", c.AdminPort)
		} else if c.AdminPort == c.Port {
			p.addf("admin_port", "%d must differ from port (0 shares port)", c.AdminPort)
		}
	}
	if !slices.Contains(logLevels, c.LogLevel) {
		p.addf("log_level", "%q must be one of %s", c.LogLevel, strings.Join(logLevels, ", "))
	}
	if c.StateFile == "" && c.DatabaseURL == "" {
		p.addf("state_file", `"" must name a file when database_url is empty`)
	}
	positive(&p, "shutdown_timeout", c.ShutdownTimeout)
	positive(&p, "database_connect_timeout", c.DatabaseConnectTimeout)
	checkTLS(c, &p)
	c.LoadBalancer.check(&p)
	c.RateLimiter.check(&p)
	return p
}

func (lb *LoadBalancer) check(p *problems) {
	if len(lb.BackendURLs) == 0 {
		p.addf("load_balancer."+lb.listName(), "must list at least one backend")
	}
	first := map[string]int{}
	for i, s := range lb.BackendURLs {
		path := lb.backendPath(i)
		u, problem := parseBackend(s)
		if problem != "" {
			p.addf(path, "%s", problem)
			continue
		}
		if j, dup := first[u.String()]; dup {
			p.addf(path, "%q duplicates %s[%d]", s, lb.listName(), j)
			continue
		}
		first[u.String()] = i
	}
	positive(p, "load_balancer.health_check_interval", lb.HealthCheckInterval)
	between(p, "load_balancer.health_check_worker_count", lb.HealthCheckWorkerCount, 1, maxWorkers)
	hp := lb.HealthCheckPath
	if !strings.HasPrefix(hp, "/") || strings.ContainsFunc(hp, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		p.addf("load_balancer.health_check_path", "%q must be a path starting with \"/\", without spaces", hp)
	}
	positive(p, "load_balancer.health_check_timeout", lb.HealthCheckTimeout)
	atLeast(p, "load_balancer.healthy_threshold", lb.HealthyThreshold, 1)
	atLeast(p, "load_balancer.unhealthy_threshold", lb.UnhealthyThreshold, 1)
	between(p, "load_balancer.max_retries", lb.MaxRetries, 0, maxMaxRetries)
	positive(p, "load_balancer.request_timeout", lb.RequestTimeout)
	atLeast(p, "load_balancer.max_retry_body_bytes", lb.MaxRetryBodyBytes, 0)
	atLeast(p, "load_balancer.max_retry_buffer_bytes", lb.MaxRetryBufferBytes, 0)
	lb.checkGateway(p)
}

func (rl *RateLimiter) check(p *problems) {
	positive(p, "rate_limiter.add_tokens_interval", rl.AddTokensInterval)
	positive(p, "rate_limiter.save_state_interval", rl.SaveStateInterval)
	positive(p, "rate_limiter.remove_stale_interval", rl.RemoveStaleInterval)
	if r := rl.DefaultRatePerSec; !(r > 0 && r <= maxRatePerSec) { // also refuses NaN
		p.addf("rate_limiter.default_rate_per_sec", "%g must be > 0 and <= 1000000", r)
	}
	between(p, "rate_limiter.default_capacity", rl.DefaultCapacity, 1, maxDefaultCapacity)
	positive(p, "rate_limiter.cache.time_to_live", rl.CacheTTL)
	// Below half a second a lease would expire between two renewals.
	if rl.LeaseTTL < minLeaseTTL {
		p.addf("rate_limiter.lease_ttl", "%s must be >= 0.5", strconv.FormatFloat(rl.LeaseTTL.Seconds(), 'g', -1, 64))
	}
	if pol := rl.StoreDownPolicy; pol != StoreDownSafe && pol != StoreDownClosed && pol != StoreDownOpen {
		p.addf("rate_limiter.store_down_policy", "%q must be one of safe, closed, open", pol)
	}
}

const minLeaseTTL = 500 * time.Millisecond

func positive(p *problems, path string, d time.Duration) {
	if d <= 0 {
		p.addf(path, "%s must be > 0", strconv.FormatFloat(d.Seconds(), 'g', -1, 64))
	}
}

func between[T int | int64](p *problems, path string, v, lo, hi T) {
	if v < lo || v > hi {
		p.addf(path, "%d must be between %d and %d", v, lo, hi)
	}
}

func atLeast[T int | int64](p *problems, path string, v, lo T) {
	if v < lo {
		p.addf(path, "%d must be >= %d", v, lo)
	}
}

// parseBackend parses a backend URL into canonical form (lower-case host,
// no trailing slash) so that duplicates spelt differently are caught and
// paths join cleanly when forwarding. It returns a problem message instead
// when s is not a plain absolute http(s) URL. Messages never quote a
// password.
func parseBackend(s string) (*url.URL, string) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Opaque != "" || u.Hostname() == "" {
		if err == nil && u.User != nil {
			s = u.Redacted()
		}
		return nil, fmt.Sprintf("%q is not an absolute http(s) URL", s)
	}
	switch {
	case u.User != nil:
		return nil, fmt.Sprintf("%q must not contain user info", u.Redacted())
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Sprintf("%q must not have a query", s)
	case u.Fragment != "":
		return nil, fmt.Sprintf("%q must not have a fragment", s)
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Sprintf("%q has port %s, want 1 to 65535", s, port)
		}
	}
	u.Host = strings.ToLower(u.Host)
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = strings.TrimRight(u.RawPath, "/")
	return u, ""
}

// normalize rewrites the backend URLs of a checked config in canonical form.
func (c *Config) normalize() {
	for i, s := range c.LoadBalancer.BackendURLs {
		if u, problem := parseBackend(s); problem == "" {
			c.LoadBalancer.BackendURLs[i] = u.String()
		}
	}
}

// ParsedBackends returns the backend URLs parsed, in order. For a Config
// from Load or Parse it never fails.
func (c *Config) ParsedBackends() ([]*url.URL, error) {
	urls := make([]*url.URL, len(c.LoadBalancer.BackendURLs))
	for i, s := range c.LoadBalancer.BackendURLs {
		u, problem := parseBackend(s)
		if problem != "" {
			return nil, fmt.Errorf("config: %w", &Error{Path: c.LoadBalancer.backendPath(i), Msg: problem})
		}
		urls[i] = u
	}
	return urls, nil
}
