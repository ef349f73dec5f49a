#!/usr/bin/env bash
# Latency at a fixed rate, the open-loop figure wrk cannot give: vegeta sends
# RATE requests/s for DURATION seconds to bench/goproxy -pool ("gopool", plain
# httputil.ReverseProxy with a buffer pool) and to Tollgate, alternating for
# ROUNDS rounds, in bench/peers.sh's split layout: the proxy alone on CPU 0, the
# load generator and both backends on CPU 1. Prints each run's latency
# percentiles and success ratio, then medians per proxy.
#
#   scripts/latency.sh TOLLGATE_BINARY CONFIG API_KEY OUTDIR
#
# CONFIG must make Tollgate listen on 127.0.0.1:18095 and forward to the
# bench backends, 127.0.0.1:18081 and :18082, with API_KEY's client in its
# store (scripts/bench.sh writes and seeds one). "direct" is vegeta straight
# to backend 1: the floor that the load generator and the machine set.
# Knobs: RATE [2000]; DURATION [10]; ROUNDS [3]. On the 2-core machine this was written on, vegeta
# pinned beside the backends falls behind above about 2,500 requests/s even
# against a backend alone (its latencies then measure its own queue), so
# the default stays below that rather than at half of gopool's peak.
# Loopback only; every process it starts is stopped by its process group
# id.
set -euo pipefail
if (($# != 4)); then
	echo "usage: $0 TOLLGATE_BINARY CONFIG API_KEY OUTDIR" >&2
	exit 2
fi
bin=$(realpath "$1") config=$(realpath "$2") key=$3 out=$(realpath -m "$4")
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"

RATE=${RATE:-2000} DURATION=${DURATION:-10} ROUNDS=${ROUNDS:-3}
mkdir -p "$out"

if ! command -v vegeta >/dev/null; then
	echo "--- installing vegeta"
	GOFLAGS=-mod=mod go install github.com/tsenart/vegeta/v12@v12.13.0
fi

tools=$(mktemp -d -t tollgate-latency.XXXXXX)
pgids=() # process groups started and not yet confirmed gone

# stop_group PGID: SIGTERM, up to 5 s to exit, then SIGKILL.
stop_group() {
	kill -TERM -- "-$1" 2>/dev/null || return 0
	for _ in $(seq 1 50); do
		kill -0 -- "-$1" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL -- "-$1" 2>/dev/null || true
}
stop_all() {
	local g
	for g in "${pgids[@]}"; do stop_group "$g"; done
	pgids=()
}
# stop_last: stops the group started last.
stop_last() {
	stop_group "${pgids[-1]}"
	unset 'pgids[-1]'
}
trap 'stop_all; rm -rf "$tools"' EXIT

go build -o "$tools/" ./bench/backend ./bench/goproxy

# start CPU NAME COMMAND...: runs COMMAND pinned to CPU in its own session.
start() {
	local cpu=$1 name=$2
	shift 2
	setsid taskset -c "$cpu" "$@" >"$out/$name.log" 2>&1 &
	pgids+=($!)
}

wait_ok() {
	for _ in $(seq 1 100); do
		curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "latency: $1 never answered 200" >&2
	return 1
}

start 1 backend1 "$tools/backend" -addr 127.0.0.1:18081 -name b1
start 1 backend2 "$tools/backend" -addr 127.0.0.1:18082 -name b2
wait_ok http://127.0.0.1:18081/health
wait_ok http://127.0.0.1:18082/health

# attack NAME URL ROUND: one warm-up and one measured run; appends a row.
attack() {
	local name=$1 url=$2 round=$3
	local target="GET $url"
	echo "$target" | taskset -c 1 vegeta attack -rate="$RATE/s" -duration=2s \
		-header "Authorization: Bearer $key" >/dev/null
	echo "$target" | taskset -c 1 vegeta attack -rate="$RATE/s" -duration="${DURATION}s" \
		-header "Authorization: Bearer $key" >"$out/$name-$round.bin"
	vegeta report -type=text "$out/$name-$round.bin" >"$out/$name-$round.txt"
	# Latencies [min, mean, 50, 90, 95, 99, max]; Success [ratio] as "100.00%".
	awk -v name="$name" -v round="$round" -v rate="$RATE" '
		function us(s) {
			gsub(/,/, "", s)
			if (s ~ /µs$/) { sub(/µs$/, "", s); return s + 0 }
			if (s ~ /ms$/) { sub(/ms$/, "", s); return s * 1000 }
			if (s ~ /ns$/) { sub(/ns$/, "", s); return s / 1000 }
			if (s ~ /s$/)  { sub(/s$/, "", s);  return s * 1e6 }
			return s
		}
		/^Latencies/ { for (i = 1; i <= NF; i++) if ($i ~ /\]$/) break
			p50 = us($(i+3)); p90 = us($(i+4)); p99 = us($(i+6)); mx = us($(i+7)) }
		/^Success/ { ok = $NF }
		END { printf "%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%s\n", name, round, rate, p50, p90, p99, mx, ok }
	' "$out/$name-$round.txt" >>"$out/latency.tsv"
}

printf "proxy\tround\trate\tp50_us\tp90_us\tp99_us\tmax_us\tsuccess\n" >"$out/latency.tsv"
for round in $(seq 1 "$ROUNDS"); do
	attack direct http://127.0.0.1:18081/ "$round"

	start 0 gopool "$tools/goproxy" -addr 127.0.0.1:18094 -pool
	wait_ok http://127.0.0.1:18094/
	attack gopool http://127.0.0.1:18094/ "$round"
	stop_last

	start 0 tollgate "$bin" -config "$config"
	wait_ok http://127.0.0.1:18095/
	attack tollgate http://127.0.0.1:18095/ "$round"
	stop_last
done

column -t -s $'\t' "$out/latency.tsv"
echo
echo "medians over $ROUNDS rounds at $RATE req/s:"
for p in direct gopool tollgate; do
	awk -F'\t' -v p="$p" '$1 == p { print $6 }' "$out/latency.tsv" | sort -n |
		awk -v p="$p" '{ v[NR] = $1 } END { printf "  %-9s p99 %.0f µs\n", p, v[int((NR + 1) / 2)] }'
done | tee "$out/summary.txt"
