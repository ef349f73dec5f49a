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

source scripts/pg-throwaway.sh
trap pg_throwaway_stop EXIT
[[ -n ${DATABASE_URL:-} ]] || pg_throwaway

echo "--- cluster: N = 1, 2, 4 processes, one shared bucket (capacity 50, rate 50/s)"
# The table goes to the terminal and $out; the whole test log, with the
# per-instance timeline of any run over the bound, beside it.
CLUSTER_BENCH=1 go test -v -count=1 -timeout 30m -run '^TestClusterBench$' ./cmd/tollgate/ \
	| tee "${out%.md}.log" | grep '^|' | tee "$out"
