#!/usr/bin/env bash
# bench/peers.sh: Tollgate beside well-known reverse proxies, on this
# machine, in one run.
#
# Two tiny Go backends (bench/backend on 127.0.0.1:18081 and :18082) sit
# behind nginx, HAProxy, Caddy, the standard library's ReverseProxy
# ("goproxy"), the same with a buffer pool ("gopool"), and optionally one
# more proxy given on the command line (Tollgate), each balancing
# round-robin with keep-alive to the backends. wrk drives every target in
# interleaved rounds (the order rotates each round, so a slow minute of the
# machine does not fall on one target), and the harness reads from /proc
# how much CPU each proxy's processes spent per request: the figure least
# disturbed by a noisy machine. It prints a markdown table of medians and
# stops every process it started, by process group, never by name.
# Loopback only; every load run is bounded by wrk -d.
#
#   bench/peers.sh                        the peers alone
#   bench/peers.sh PORT COMMAND [ARGS...] the peers and one more proxy
#
# The extra proxy is started (exec, no shell) after the backends, pinned
# like the peers; it must listen on 127.0.0.1:PORT and forward to both
# backends. It is stopped with SIGTERM (SIGKILL after 5 s) at the end.
#
# Knobs (environment, [default]):
#   PEERS     built-in targets [direct nginx haproxy caddy goproxy gopool];
#             direct is wrk straight to backend 1, the ceiling without a proxy
#   EXTRA_NAME  the extra proxy's name in the table [extra]
#   HEADER    a header sent on every request to every target, e.g.
#             'Authorization: Bearer KEY' (the peers pass it on) []
#   CONNS     wrk connection counts [16 64 256]
#   ROUNDS    rounds [3]
#   DURATION  seconds per measured run [10]; WARMUP unmeasured seconds
#             before each [2]
#   LAYOUT    split: the proxy alone on CPU 0, wrk and the backends on
#             CPU 1 [split]; none: no pinning
#   BASE      the target the ratio column divides by [nginx]
#   QUIET_MAX before each run, wait up to 60 s until the rest of the
#             machine uses at most this % of one core [20]; 0 skips
#   OUTDIR    where results, logs and configs go [bench/results/peers-<time>]
# Needs wrk, nginx, haproxy, taskset, curl; Caddy is skipped when missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
PEERS=${PEERS:-"direct nginx haproxy caddy goproxy gopool"}
EXTRA_NAME=${EXTRA_NAME:-extra}
HEADER=${HEADER:-}
CONNS=${CONNS:-"16 64 256"}
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} WARMUP=${WARMUP:-2}
LAYOUT=${LAYOUT:-split} BASE=${BASE:-nginx} QUIET_MAX=${QUIET_MAX:-20}
OUTDIR=${OUTDIR:-$root/bench/results/peers-$(date -u +%Y%m%dT%H%M%SZ)}

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { say "error: $*"; exit 1; }

declare -A port=([direct]=18081 [nginx]=18091 [haproxy]=18092 [caddy]=18093 [goproxy]=18094 [gopool]=18096)
extra_argv=()
if (($# > 0)); then
	(($# >= 2)) || fail "usage: $0 [PORT COMMAND [ARGS...]]"
	[[ $1 =~ ^[0-9]+$ ]] || fail "PORT must be a number, got $1"
	port[$EXTRA_NAME]=$1
	shift
	extra_argv=("$@")
fi
for tool in wrk nginx haproxy taskset curl go; do
	command -v "$tool" >/dev/null || fail "$tool not found"
done
caddy=${CADDY:-$(command -v caddy || echo "$HOME/go/bin/caddy")}
targets=()
for t in $PEERS; do
	[[ -n ${port[$t]:-} ]] || fail "unknown peer $t"
	if [[ $t == caddy && ! -x $caddy ]]; then
		say "no caddy binary: skipping caddy"
		continue
	fi
	targets+=("$t")
done
((${#extra_argv[@]} == 0)) || targets+=("$EXTRA_NAME")

case $LAYOUT in
split) proxy_cpus=0 backend_cpus=1 load_pin=(taskset -c 1) ;;
none) proxy_cpus= backend_cpus= load_pin=() ;;
*) fail "LAYOUT is split or none, got $LAYOUT" ;;
esac
hdr=()
[[ -z $HEADER ]] || hdr=(-H "$HEADER")

mkdir -p "$OUTDIR"/{bin,logs,raw,conf,tmp}
say "results in $OUTDIR"
(cd "$root" && go build -o "$OUTDIR/bin/" ./bench/backend ./bench/goproxy ./bench/report) || fail "go build failed"
for pair in nginx:nginx.conf haproxy:haproxy.cfg caddy:Caddyfile; do
	sed "s#@DIR@#$OUTDIR#g; s#@PORT@#${port[${pair%%:*}]}#g" "$here/conf/${pair#*:}" >"$OUTDIR/conf/${pair#*:}"
done

# ---- processes: each in its own session, so its pid is the group to stop.
declare -A group=()
started=()
launch() { # NAME CPUS COMMAND...
	local name=$1 cpus=$2
	shift 2
	local pin=()
	[[ -z $cpus ]] || pin=(taskset -c "$cpus")
	setsid "${pin[@]}" "$@" >"$OUTDIR/logs/$name.log" 2>&1 </dev/null &
	group[$name]=$!
	started+=($!)
}
alive() { ps -o stat= --sid "$1" 2>/dev/null | grep -qv '^Z'; }
stop_all() {
	local g i
	for g in "${started[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
	for g in "${started[@]}"; do
		for ((i = 0; i < 50; i++)); do alive "$g" || break; sleep 0.1; done
		! alive "$g" || kill -KILL -- "-$g" 2>/dev/null || true
		wait "$g" 2>/dev/null || true
	done
	started=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

ready() { # NAME PORT PATH: wait up to 60 s for a 200
	# --max-time: a port that accepts but never answers must not hang us.
	local deadline=$((SECONDS + 60))
	while ((SECONDS < deadline)); do
		[[ $(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "${hdr[@]}" "http://127.0.0.1:$2$3" || true) == 200 ]] && return 0
		alive "${group[$1]}" || fail "$1 exited; see $OUTDIR/logs/$1.log"
		sleep 0.2
	done
	fail "$1 did not answer on port $2 within 60 s; see $OUTDIR/logs/$1.log"
}

for p in 18081 18082 $(for t in "${targets[@]}"; do echo "${port[$t]}"; done); do
	[[ -z $(ss -Htln "sport = :$p") ]] || fail "port $p is in use"
done
launch b1 "$backend_cpus" "$OUTDIR/bin/backend" -addr 127.0.0.1:18081 -name b1
launch b2 "$backend_cpus" "$OUTDIR/bin/backend" -addr 127.0.0.1:18082 -name b2
group[direct]=${group[b1]}
ready b1 18081 /health
ready b2 18082 /health
for t in "${targets[@]}"; do
	case $t in
	direct) ;;
	nginx) launch nginx "$proxy_cpus" nginx -p "$OUTDIR/" -c "$OUTDIR/conf/nginx.conf" -g 'daemon off;' ;;
	haproxy) launch haproxy "$proxy_cpus" haproxy -db -f "$OUTDIR/conf/haproxy.cfg" ;;
	caddy) launch caddy "$proxy_cpus" env XDG_DATA_HOME="$OUTDIR/tmp" XDG_CONFIG_HOME="$OUTDIR/tmp" \
		"$caddy" run --config "$OUTDIR/conf/Caddyfile" --adapter caddyfile ;;
	goproxy) launch goproxy "$proxy_cpus" "$OUTDIR/bin/goproxy" -addr 127.0.0.1:${port[goproxy]} ;;
	gopool) launch gopool "$proxy_cpus" "$OUTDIR/bin/goproxy" -addr 127.0.0.1:${port[gopool]} -pool ;;
	*) launch "$t" "$proxy_cpus" "${extra_argv[@]}" ;;
	esac
done
for t in "${targets[@]}"; do ready "$t" "${port[$t]}" /; done

# ---- measurements
hz=$(getconf CLK_TCK)
ncpu=$(grep -c '^cpu[0-9]' /proc/stat)
ticks() { # SESSION: utime+stime of its processes, in clock ticks
	local p rest t=0 f
	for p in $(ps -o pid= --sid "$1"); do
		read -r rest <"/proc/$p/stat" 2>/dev/null || continue
		read -ra f <<<"${rest##*) }"
		t=$((t + f[11] + f[12]))
	done
	echo "$t"
}
rss_kb() { ps -o rss= --sid "$1" | awk '{s += $1} END {print s + 0}'; }
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9; exit}' /proc/stat; }
quiet() { # wait up to 60 s for the machine to calm down
	((QUIET_MAX > 0)) || return 0
	local i b0 t0 b1 t1 busy
	for ((i = 0; i < 60; i++)); do
		read -r b0 t0 < <(machine)
		sleep 1
		read -r b1 t1 < <(machine)
		busy=$(((b1 - b0) * 100 * ncpu / (t1 - t0 > 0 ? t1 - t0 : 1)))
		((busy > QUIET_MAX)) || return 0
	done
	say "  the machine is still ${busy}% of a core busy; measuring anyway"
}

# balance TARGET: one second of load, then how it split between backends.
balance() {
	local a b
	curl -s --max-time 2 "http://127.0.0.1:18081/_count?reset=1" >/dev/null
	curl -s --max-time 2 "http://127.0.0.1:18082/_count?reset=1" >/dev/null
	"${load_pin[@]}" wrk -t1 -c8 -d1s "${hdr[@]}" "http://127.0.0.1:${port[$1]}/" >/dev/null
	a=$(curl -s --max-time 2 http://127.0.0.1:18081/_count) b=$(curl -s --max-time 2 http://127.0.0.1:18082/_count)
	printf -- '- %s: backend 1 served %s, backend 2 %s\n' "$1" "$a" "$b" >>"$OUTDIR/balance.md"
	((a + b > 0 && a * 100 / (a + b) >= 40 && a * 100 / (a + b) <= 60)) || say "  warning: $1 splits unevenly ($a / $b)"
}

# measure ROUND CONNS TARGET: one wrk run, appended to results.tsv.
measure() {
	local r=$1 c=$2 t=$3 url="http://127.0.0.1:${port[$3]}/" raw="$OUTDIR/raw/r$1-c$2-$3.txt"
	local others=${group[b2]} p0 p1 o0 o1 m0 m1 line cpu foreign
	[[ $t == direct ]] || others="$others ${group[b1]}"
	quiet
	((WARMUP == 0)) || "${load_pin[@]}" wrk -t1 -c"$c" -d"${WARMUP}s" "${hdr[@]}" "$url" >/dev/null
	p0=$(ticks "${group[$t]}") o0=$(for g in $others; do ticks "$g"; done | awk '{s += $1} END {print s}')
	m0=$(machine)
	local TIMEFORMAT='%3U %3S' wrk_cpu
	{ time "${load_pin[@]}" wrk -t1 -c"$c" -d"${DURATION}s" --latency -s "$here/wrk.lua" "${hdr[@]}" "$url" >"$raw" 2>&1; } 2>"$raw.time"
	p1=$(ticks "${group[$t]}") o1=$(for g in $others; do ticks "$g"; done | awk '{s += $1} END {print s}')
	m1=$(machine)
	wrk_cpu=$(cat "$raw.time")
	line=$(sed -n 's/^RESULT //p' "$raw")
	[[ -n $line ]] || fail "no result in $raw"
	local -A k=()
	local kv
	for kv in $line; do k[${kv%%=*}]=${kv#*=}; done
	cpu=$(awk -v d=$((p1 - p0)) -v hz="$hz" -v n="${k[requests]}" 'BEGIN {printf "%.1f", n ? d * 1e6 / hz / n : 0}')
	# What the rest of the machine used meanwhile, in % of one core: a run
	# with a high figure was disturbed.
	foreign=$(awk -v m0="$m0" -v m1="$m1" -v own=$((p1 - p0 + o1 - o0)) -v w="$wrk_cpu" -v hz="$hz" -v n="$ncpu" 'BEGIN {
		split(m0, x, " "); split(m1, y, " "); split(w, u, " ")
		f = (y[1] - x[1]) - own - (u[1] + u[2]) * hz; if (f < 0) f = 0
		printf "%.0f", (y[2] - x[2]) ? 100 * f * n / (y[2] - x[2]) : 0 }')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$t" "${k[rps]}" "${k[p50_us]}" "${k[p99_us]}" \
		"${k[errors]}" "$cpu" "$foreign" >>"$OUTDIR/results.tsv"
	say "  round $r c=$c $(printf '%-9s' "$t") ${k[rps]} req/s, ${cpu} µs CPU/req, foreign ${foreign}%, errors ${k[errors]}"
}

printf 'round\tconns\ttarget\trps\tp50_us\tp99_us\terrors\tcpu_us_per_req\tforeign_pct_core\n' >"$OUTDIR/results.tsv"
: >"$OUTDIR/balance.md"
declare -A idle=()
for t in "${targets[@]}"; do idle[$t]=$(rss_kb "${group[$t]}"); done
for t in "${targets[@]}"; do [[ $t == direct ]] || balance "$t"; done
n=${#targets[@]}
say "targets: ${targets[*]}; conns: $CONNS; $ROUNDS rounds of ${DURATION}s"
for ((r = 1; r <= ROUNDS; r++)); do
	for c in $CONNS; do
		for ((i = 0; i < n; i++)); do measure "$r" "$c" "${targets[$(((i + r - 1) % n))]}"; done
	done
done

{
	echo "## Peer benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	echo "- $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); layout $LAYOUT"
	echo "- wrk -t1 -c{${CONNS// /,}} -d${DURATION}s after ${WARMUP}s of warm-up, $ROUNDS interleaved rounds; medians"
	echo "- $(nginx -v 2>&1); $(haproxy -v 2>&1 | head -1); $(go version)"
	echo
	"$OUTDIR/bin/report" -base "$BASE" "$OUTDIR/results.tsv"
	echo
	echo "Memory (KiB, the process tree's RSS): idle at start / peak at the end"
	echo
	for t in "${targets[@]}"; do
		peak=0
		for p in $(ps -o pid= --sid "${group[$t]}"); do
			v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
			peak=$((peak + ${v:-0}))
		done
		echo "- $t: ${idle[$t]} / $peak"
	done
	echo
	echo "Round-robin check (one second of wrk -c8):"
	echo
	cat "$OUTDIR/balance.md"
} | tee "$OUTDIR/report.md"
