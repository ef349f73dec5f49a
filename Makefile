# Tollgate's entry points. Recipes are tab-indented.
export PATH := $(PATH):/usr/local/go/bin

GO ?= go

.PHONY: test build vet fmt-check bench run

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

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Placeholder: only builds for now. The issue that adds the demo backends
# makes this start the embedded-store setup of SPEC 1 (two backends on
# 127.0.0.1:8081/8082, Tollgate on :8080, Ctrl-C stops all).
run: build
