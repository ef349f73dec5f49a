# Tollgate's entry points. Recipes are tab-indented.
export PATH := $(PATH):/usr/local/go/bin

GO ?= go

.PHONY: test build vet fmt-check bench run fuzz

# Every test with -race; starts a throwaway PostgreSQL when DATABASE_URL is
# unset (see scripts/test.sh). Extra go test flags: GOTESTFLAGS="-run X".
test:
	scripts/test.sh

build:
	$(GO) build -o bin/ ./cmd/...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Go benchmarks, then Tollgate beside nginx, HAProxy, Caddy and plain Go
# proxies (bench/peers.sh). BENCH_PART=go or peers runs one part. Not part
# of make test or CI; keep the machine quiet while it runs.
bench:
	scripts/bench.sh

# Every fuzz target in turn for FUZZTIME each (go test -fuzz takes one
# target per run); prints the executions per target. See scripts/fuzz.sh.
FUZZTIME ?= 30s
fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

# Two demo backends on 127.0.0.1:8081/8082 and Tollgate on :8080 with the
# embedded store; creates a demo client and prints a curl line. Ctrl-C stops
# all.
run:
	scripts/run-demo.sh
