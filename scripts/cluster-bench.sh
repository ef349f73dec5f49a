#!/usr/bin/env bash
# cluster-bench.sh: make bench's cluster part (BENCH_PART=cluster). N = 1, 2
# and 4 Tollgate processes share one client's bucket on one PostgreSQL,
# under each load pattern (uniform, 90-10, all-to-one, moving every second)
# and offered load (0.5x, 2x, 10x the rate); it prints a Markdown table per
# run: admitted, the single-bucket bound, the worst 1 s window's excess
# over it, utilisation against one bucket, database statements per second,
# p99 latency and the decisions that waited on the database.
#
# cmd/tollgate TestClusterBench drives them: it builds the binary once
# (without -race), starts fresh processes on a fresh database for each run,
# offers the load over HTTP on 127.0.0.1 and reads each process's closing
# log line after SIGTERM for the statements and waits. PostgreSQL:
# DATABASE_URL, else a throwaway server as in scripts/test.sh.
# CLUSTER_BENCH_RUN sets each run's length (default 3s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"
RESULTS=bench/results
mkdir -p "$RESULTS"
out="$RESULTS/cluster-$(date -u +%Y%m%dT%H%M%SZ).md"

pg_tmp=""
cleanup() {
	if [[ -n $pg_tmp ]]; then
		as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" stop -m immediate -w >/dev/null 2>&1 || true
		rm -rf "$pg_tmp"
	fi
}
as_pg() {
	if [[ $EUID -eq 0 ]]; then (cd "$pg_tmp" && runuser -u postgres -- "$@"); else (cd "$pg_tmp" && "$@"); fi
}
trap cleanup EXIT

if [[ -z ${DATABASE_URL:-} ]]; then
	pg_bin=$(scripts/pg-bindir.sh)
	pg_tmp=$(mktemp -d -t tollgate-cluster-pg.XXXXXX)
	[[ $EUID -ne 0 ]] || chown postgres: "$pg_tmp"
	as_pg "$pg_bin/initdb" -D "$pg_tmp/data" -A trust -U postgres -E UTF8 --no-sync >"$pg_tmp/initdb.log"
	# A random port may be taken: try a few.
	for attempt in 1 2 3 4 5; do
		port=$((20000 + RANDOM % 40000))
		if as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" -l "$pg_tmp/postgres.log" -w -t 60 \
			-o "-F -k $pg_tmp -p $port -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200" \
			start >/dev/null; then
			break
		fi
		[[ $attempt -lt 5 ]] || { tail -n 20 "$pg_tmp/postgres.log" >&2; exit 1; }
	done
	export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
fi

echo "--- cluster: N = 1, 2, 4 processes, one shared bucket (capacity 50, rate 50/s)"
# The table goes to the terminal and $out; the whole test log, with the
# per-instance timeline of any run over the bound, beside it.
CLUSTER_BENCH=1 go test -v -count=1 -timeout 30m -run '^TestClusterBench$' ./cmd/tollgate/ \
	| tee "${out%.md}.log" | grep '^|' | tee "$out"
