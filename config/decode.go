package config

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// object is one JSON object of the document being decoded. Each accessor
// marks its key as known; unknown reports the keys nobody asked for, which
// is how misspelt fields are refused. Keys match exactly, unlike
// encoding/json's case-insensitive struct matching.
type object struct {
	path   string
	fields map[string]json.RawMessage
	known  map[string]bool
	p      *problems
}

// newObject decodes raw, already known to be valid JSON, as an object. A
// value of another type is reported and yields an empty object.
func newObject(p *problems, path string, raw json.RawMessage) *object {
	o := &object{path: path, known: map[string]bool{}, p: p}
	if raw != nil && json.Unmarshal(raw, &o.fields) != nil {
		p.addf(path, "%s is not an object", show(raw))
	}
	return o
}

func (o *object) at(name string) string {
	if o.path == "" {
		return name
	}
	return o.path + "." + name
}

// raw returns the value of name, or nil when it is absent or null: null is
// taken to mean "not set", as operators write it.
func (o *object) raw(name string) json.RawMessage {
	o.known[name] = true
	v := o.fields[name]
	if string(v) == "null" {
		return nil
	}
	return v
}

func (o *object) has(name string) bool { return o.raw(name) != nil }

func (o *object) require(name string) {
	if !o.has(name) {
		o.p.addf(o.at(name), "required but missing")
	}
}

// object returns the nested object name, empty when absent.
func (o *object) object(name string) *object {
	return newObject(o.p, o.at(name), o.raw(name))
}

// unknown reports every key of o that no accessor asked for, in sorted order.
func (o *object) unknown() {
	for _, k := range slices.Sorted(maps.Keys(o.fields)) {
		if !o.known[k] {
			o.p.addf(o.at(k), "unknown field")
		}
	}
}

// The setters below leave *dst, the default, alone when the field is absent
// or does not decode; in the latter case they report a problem.

func (o *object) str(name string, dst *string) {
	if v := o.raw(name); v != nil && json.Unmarshal(v, dst) != nil {
		o.p.addf(o.at(name), "%s is not a string", show(v))
	}
}

func (o *object) boolean(name string, dst *bool) {
	if v := o.raw(name); v != nil && json.Unmarshal(v, dst) != nil {
		o.p.addf(o.at(name), "%s is not true or false", show(v))
	}
}

func (o *object) strings(name string, dst *[]string) {
	v := o.raw(name)
	if v == nil {
		return
	}
	var elems []json.RawMessage
	if json.Unmarshal(v, &elems) != nil {
		o.p.addf(o.at(name), "%s is not an array of strings", show(v))
		return
	}
	out := make([]string, len(elems))
	ok := true
	for i, e := range elems {
		if json.Unmarshal(e, &out[i]) != nil || string(e) == "null" {
			o.p.addf(fmt.Sprintf("%s[%d]", o.at(name), i), "%s is not a string", show(e))
			ok = false
		}
	}
	if ok {
		*dst = out
	}
}

// number returns the field as a float64; want describes the expected value
// in the "is not ..." message.
func (o *object) number(name, want string) (float64, bool) {
	v := o.raw(name)
	if v == nil {
		return 0, false
	}
	if v[0] != '-' && (v[0] < '0' || v[0] > '9') {
		o.p.addf(o.at(name), "%s is not %s", show(v), want)
		return 0, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil {
		o.p.addf(o.at(name), "%s is out of range", show(v))
		return 0, false
	}
	return f, true
}

func (o *object) float(name string, dst *float64) {
	if f, ok := o.number(name, "a number"); ok {
		*dst = f
	}
}

// maxSeconds is the largest count of seconds a time.Duration holds (~292 years).
const maxSeconds = float64(math.MaxInt64 / int64(time.Second))

// seconds reads a count of seconds, possibly decimal, as a duration.
func (o *object) seconds(name string, dst *time.Duration) {
	f, ok := o.number(name, "a number of seconds")
	switch {
	case !ok:
	case math.Abs(f) > maxSeconds:
		o.p.addf(o.at(name), "%g is out of range", f)
	default:
		*dst = time.Duration(math.Round(f * float64(time.Second)))
	}
}

// maxExactInt bounds integers so float64 holds them exactly.
const maxExactInt = 1 << 53

// integer reads a whole number; 20.0 and 2e1 are accepted as 20.
func integer[T int | int64](o *object, name string, dst *T) {
	f, ok := o.number(name, "an integer")
	switch {
	case !ok:
	case f != math.Trunc(f):
		o.p.addf(o.at(name), "%g is not an integer", f)
	case math.Abs(f) > maxExactInt:
		o.p.addf(o.at(name), "%g is out of range", f)
	default:
		*dst = T(f)
	}
}

// decode reads data over the defaults. It reports JSON problems (syntax,
// types, unknown or missing fields) but checks no values: see Config.check.
func decode(data []byte) (*Config, problems) {
	var p problems
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return nil, problems{documentError(data, err)}
	}
	c := defaults()
	root := &object{fields: top, known: map[string]bool{}, p: &p}
	root.require("port")
	integer(root, "port", &c.Port)
	integer(root, "admin_port", &c.AdminPort)
	root.str("log_level", &c.LogLevel)
	c.LogLevel = strings.ToLower(c.LogLevel)
	root.str("log_file", &c.LogFile)
	root.str("database_url", &c.DatabaseURL)
	root.str("state_file", &c.StateFile)
	root.str("admin_api_key", &c.AdminAPIKey)
	root.seconds("shutdown_timeout", &c.ShutdownTimeout)
	root.seconds("database_connect_timeout", &c.DatabaseConnectTimeout)
	root.boolean("access_log", &c.AccessLog)
	root.boolean("pprof", &c.Pprof)
	root.str("tls_cert_file", &c.TLSCertFile)
	root.str("tls_key_file", &c.TLSKeyFile)
	decodeLoadBalancer(root.object("load_balancer"), &c.LoadBalancer)
	decodeRateLimiter(root.object("rate_limiter"), &c.RateLimiter)
	root.unknown()
	return c, p
}

func decodeLoadBalancer(o *object, lb *LoadBalancer) {
	decodeBackends(o, lb)
	decodeGateway(o, lb)
	o.seconds("health_check_interval", &lb.HealthCheckInterval)
	integer(o, "health_check_worker_count", &lb.HealthCheckWorkerCount)
	o.str("health_check_path", &lb.HealthCheckPath)
	integer(o, "healthy_threshold", &lb.HealthyThreshold)
	integer(o, "unhealthy_threshold", &lb.UnhealthyThreshold)
	integer(o, "max_retries", &lb.MaxRetries)
	o.seconds("request_timeout", &lb.RequestTimeout)
	integer(o, "max_retry_body_bytes", &lb.MaxRetryBodyBytes)
	integer(o, "max_retry_buffer_bytes", &lb.MaxRetryBufferBytes)
	if o.has("health_check_timeout") {
		o.seconds("health_check_timeout", &lb.HealthCheckTimeout)
	} else {
		lb.HealthCheckTimeout = min(lb.RequestTimeout, lb.HealthCheckInterval)
		if lb.HealthCheckTimeout <= 0 {
			// A source field is invalid and will be reported under its own
			// name; keep this derived one from adding a confusing second error.
			lb.HealthCheckTimeout = defaultRequestTimeout
		}
	}
	o.unknown()
}

func decodeRateLimiter(o *object, rl *RateLimiter) {
	o.seconds("add_tokens_interval", &rl.AddTokensInterval)
	o.seconds("save_state_interval", &rl.SaveStateInterval)
	o.seconds("remove_stale_interval", &rl.RemoveStaleInterval)
	o.float("default_rate_per_sec", &rl.DefaultRatePerSec)
	integer(o, "default_capacity", &rl.DefaultCapacity)
	o.boolean("hash_api_keys", &rl.HashAPIKeys)
	o.seconds("lease_ttl", &rl.LeaseTTL)
	o.str("store_down_policy", &rl.StoreDownPolicy)
	cache := o.object("cache")
	cache.seconds("time_to_live", &rl.CacheTTL)
	cache.unknown()
	o.unknown()
}
