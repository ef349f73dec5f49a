#!/usr/bin/env bash
# make bench: the Go benchmarks, then Tollgate side by side with nginx,
# HAProxy, Caddy and plain Go proxies through the project's own harness,
# bench/peers.sh.
#
#   scripts/bench.sh            # both parts
#   BENCH_PART=go scripts/bench.sh       # Go benchmarks only
#   BENCH_PART=peers scripts/bench.sh    # the peer comparison only
#   BENCH_PART=latency scripts/bench.sh  # fixed-rate latency, Tollgate vs gopool
#   BENCH_PART=cluster scripts/bench.sh  # N instances sharing buckets (scripts/cluster-bench.sh)
#   BENCH_STORE=postgres scripts/bench.sh # Tollgate on PostgreSQL (DATABASE_URL, else a
#                                         # throwaway server), its bucket leased
#                                         # (the default is the embedded store)
#
# The peer run's knobs (ROUNDS, CONNS, DURATION, PEERS, LAYOUT, ...) pass
# through; see the header of bench/peers.sh. Results go to bench/results/
# (ignored by git): go.txt, and the peer run's report.md, results.tsv, ...
# It installs what the peer run needs when missing (nginx, haproxy, wrk from
# Debian; Caddy from the Go module proxy). Keep the machine quiet meanwhile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"

PART=${BENCH_PART:-all}
[[ $PART != cluster ]] || exec scripts/cluster-bench.sh
RESULTS=bench/results
mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%dT%H%M%SZ)

if [[ $PART == all || $PART == go ]]; then
	echo "--- Go benchmarks"
	go test -run '^$' -bench . -benchmem -count "${BENCH_COUNT:-5}" ./... | tee "$RESULTS/go-$stamp.txt"
fi
[[ $PART == all || $PART == peers || $PART == latency ]] || exit 0

harness=bench/peers.sh

missing=()
for tool in nginx haproxy wrk; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
	echo "--- installing ${missing[*]}"
	sudo=(); [[ $EUID -eq 0 ]] || sudo=(sudo)
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if ! command -v caddy >/dev/null; then
	echo "--- installing caddy"
	GOFLAGS=-mod=mod go install github.com/caddyserver/caddy/v2/cmd/caddy@v2.11.9
fi

echo "--- building tollgate"
go build -o bin/ ./cmd/tollgate

# A bench config: the harness's two backends, one client with a rate no run
# can exhaust, metrics on (they always are), access log off, embedded store.
work=$(mktemp -d -t tollgate-bench.XXXXXX)
source scripts/pg-throwaway.sh
trap 'pg_throwaway_stop; rm -rf "$work"' EXIT
store="\"state_file\": \"$work/bench.db\""
if [[ ${BENCH_STORE:-embedded} == postgres ]]; then
	# Shared buckets through leases (SPEC 9): one hot client on PostgreSQL.
	[[ -n ${DATABASE_URL:-} ]] || pg_throwaway
	store="\"database_url\": \"$DATABASE_URL\""
else
	unset DATABASE_URL # it would take precedence over the config file
fi
key=bench-key-0123456789abcdef
cat >"$work/bench.json" <<JSON
{
  "port": 18095,
  "admin_port": 18097,
  "log_level": "warn",
  $store,
  "load_balancer": {
    "backend_urls": ["http://127.0.0.1:18081", "http://127.0.0.1:18082"],
    "health_check_interval": 5,
    "health_check_worker_count": 2,
    "max_retries": 2,
    "request_timeout": 5
  },
  "rate_limiter": {
    "add_tokens_interval": 5,
    "save_state_interval": 10,
    "remove_stale_interval": 300,
    "default_rate_per_sec": 1000000,
    "default_capacity": 1000000000,
    "cache": { "time_to_live": 300 }
  }
}
JSON

# Seed the client: start Tollgate alone, create it, stop it.
./bin/tollgate -config "$work/bench.json" >"$work/seed.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
	curl -fsS http://127.0.0.1:18097/healthz >/dev/null 2>&1 && break
	sleep 0.1
done
curl -fsS -X POST http://127.0.0.1:18097/clients -H 'Content-Type: application/json' \
	-d "{\"client_id\":\"bench\",\"api_key\":\"$key\"}" >/dev/null
kill -TERM "$pid"
wait "$pid"

if [[ $PART == all || $PART == peers ]]; then
	echo "--- peer comparison"
	out="$RESULTS/peers-$stamp"
	OUTDIR="$PWD/$out" EXTRA_NAME=tollgate HEADER="Authorization: Bearer $key" \
		bash "$harness" 18095 "$PWD/bin/tollgate" -config "$work/bench.json"
	echo "bench: results in $out"
fi
if [[ $PART == all || $PART == latency ]]; then
	echo "--- latency at a fixed rate"
	out="$RESULTS/latency-$stamp"
	scripts/latency.sh "$PWD/bin/tollgate" "$work/bench.json" "$key" "$out"
	echo "bench: results in $out"
fi
