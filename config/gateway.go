package config

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Balancing policies of load_balancer.policy (SPEC 10).
const (
	PolicyRoundRobin   = "round_robin"   // smooth weighted round-robin
	PolicyLeastRequest = "least_request" // power of two choices, weighted
)

var policies = []string{PolicyRoundRobin, PolicyLeastRequest}

// Defaults and limits of SPEC 10's fields.
const (
	defaultWeight              = 1
	maxWeight                  = 100
	defaultConsecutiveFailures = 5
	maxConsecutiveFailures     = 1000
	defaultBaseEjectionTime    = 30 * time.Second
	defaultMaxEjectionPercent  = 50
	defaultBudgetPercent       = 20
	defaultBudgetMinRetries    = 3
	maxBudgetMinRetries        = 1_000_000
)

// Outlier configures passive outlier detection: a backend whose answers
// fail ConsecutiveFailures times in a row is ejected.
type Outlier struct {
	// ConsecutiveFailures is how many failed answers (502, 503, 504 or a
	// timeout) in a row eject a backend; 0 turns detection off.
	ConsecutiveFailures int
	// BaseEjectionTime is the first ejection's length; the n-th lasts n
	// times as long, up to 10 times.
	BaseEjectionTime time.Duration
	// MaxEjectionPercent caps the share of backends ejected at once; one
	// backend always stays.
	MaxEjectionPercent int
}

// RetryBudget bounds retries in flight to max(MinRetries, Percent% of the
// requests in flight), as Envoy's retry budget does.
type RetryBudget struct {
	Percent    float64
	MinRetries int
}

// TLSEnabled reports whether the main and admin ports speak TLS.
func (c *Config) TLSEnabled() bool { return c.TLSCertFile != "" }

// Weight returns the weight of the i-th backend of BackendURLs: its
// configured weight, or 1 when none was given.
func (lb *LoadBalancer) Weight(i int) int {
	if i < len(lb.Weights) && lb.Weights[i] > 0 {
		return lb.Weights[i]
	}
	return defaultWeight
}

func defaultOutlier() Outlier {
	return Outlier{
		ConsecutiveFailures: defaultConsecutiveFailures,
		BaseEjectionTime:    defaultBaseEjectionTime,
		MaxEjectionPercent:  defaultMaxEjectionPercent,
	}
}

func defaultRetryBudget() RetryBudget {
	return RetryBudget{Percent: defaultBudgetPercent, MinRetries: defaultBudgetMinRetries}
}

// decodeBackends reads backend_urls or backends, exactly one of them.
// backends fills BackendURLs and Weights, so everything downstream reads
// one list whatever the file's form.
func decodeBackends(o *object, lb *LoadBalancer) {
	hasURLs, hasList := o.has("backend_urls"), o.has("backends")
	switch {
	case hasURLs && hasList:
		o.p.addf(o.at("backends"), "set together with backend_urls; use one of them")
		return
	case !hasList:
		o.require("backend_urls")
		o.strings("backend_urls", &lb.BackendURLs)
		return
	}
	path := o.at("backends")
	var elems []json.RawMessage
	if v := o.raw("backends"); json.Unmarshal(v, &elems) != nil {
		o.p.addf(path, "%s is not an array of objects", show(v))
		return
	}
	lb.fromBackends = true
	lb.BackendURLs = make([]string, len(elems))
	lb.Weights = make([]int, len(elems))
	for i, e := range elems {
		at := fmt.Sprintf("%s[%d]", path, i)
		if string(e) == "null" {
			o.p.addf(at, "null is not an object")
			continue
		}
		b := newObject(o.p, at, e)
		if b.fields == nil {
			continue // reported by newObject
		}
		b.require("url")
		b.str("url", &lb.BackendURLs[i])
		lb.Weights[i] = defaultWeight
		integer(b, "weight", &lb.Weights[i])
		b.unknown()
	}
}

func decodeGateway(o *object, lb *LoadBalancer) {
	o.str("policy", &lb.Policy)
	lb.Policy = strings.ToLower(lb.Policy)
	o.str("ca_file", &lb.CAFile)
	out := o.object("outlier")
	integer(out, "consecutive_failures", &lb.Outlier.ConsecutiveFailures)
	out.seconds("base_ejection_time", &lb.Outlier.BaseEjectionTime)
	integer(out, "max_ejection_percent", &lb.Outlier.MaxEjectionPercent)
	out.unknown()
	rb := o.object("retry_budget")
	rb.float("percent", &lb.RetryBudget.Percent)
	integer(rb, "min_retries", &lb.RetryBudget.MinRetries)
	rb.unknown()
}

// backendPath names the i-th backend's URL in the form the file used.
func (lb *LoadBalancer) backendPath(i int) string {
	if lb.fromBackends {
		return fmt.Sprintf("load_balancer.backends[%d].url", i)
	}
	return fmt.Sprintf("load_balancer.backend_urls[%d]", i)
}

func (lb *LoadBalancer) listName() string {
	if lb.fromBackends {
		return "backends"
	}
	return "backend_urls"
}

func (lb *LoadBalancer) checkGateway(p *problems) {
	if n := len(lb.Weights); n != 0 && n != len(lb.BackendURLs) {
		p.addf("load_balancer.backends", "%d weights for %d backends", n, len(lb.BackendURLs))
	}
	for i, w := range lb.Weights {
		if w < 1 || w > maxWeight {
			p.addf(fmt.Sprintf("load_balancer.backends[%d].weight", i), "%d must be between 1 and %d", w, maxWeight)
		}
	}
	if lb.Policy != "" && !slices.Contains(policies, lb.Policy) { // "" is the default
		p.addf("load_balancer.policy", "%q must be one of %s", lb.Policy, strings.Join(policies, ", "))
	}
	o := lb.Outlier
	between(p, "load_balancer.outlier.consecutive_failures", o.ConsecutiveFailures, 0, maxConsecutiveFailures)
	if o.ConsecutiveFailures > 0 {
		positive(p, "load_balancer.outlier.base_ejection_time", o.BaseEjectionTime)
	}
	if o.BaseEjectionTime > math.MaxInt64/maxEjectionFactor {
		p.addf("load_balancer.outlier.base_ejection_time", "%g is out of range", o.BaseEjectionTime.Seconds())
	}
	between(p, "load_balancer.outlier.max_ejection_percent", o.MaxEjectionPercent, 0, 100)
	if r := lb.RetryBudget.Percent; !(r >= 0 && r <= 100) { // also refuses NaN
		p.addf("load_balancer.retry_budget.percent", "%g must be between 0 and 100", r)
	}
	between(p, "load_balancer.retry_budget.min_retries", lb.RetryBudget.MinRetries, 0, maxBudgetMinRetries)
}

// maxEjectionFactor caps how many times base_ejection_time one ejection
// lasts (SPEC 10).
const maxEjectionFactor = 10

func checkTLS(c *Config, p *problems) {
	switch {
	case c.TLSCertFile != "" && c.TLSKeyFile == "":
		p.addf("tls_key_file", `"" must name the key of tls_cert_file`)
	case c.TLSCertFile == "" && c.TLSKeyFile != "":
		p.addf("tls_cert_file", `"" must name the certificate of tls_key_file`)
	}
}
