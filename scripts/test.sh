#!/usr/bin/env bash
# test.sh runs the tests with -race and -count=1 (make test).
#
#   scripts/test.sh [go test flags] [packages]
#
# Packages (arguments starting with ./ or ../) default to ./...; GOTESTFLAGS
# adds flags too. When DATABASE_URL is unset, one throwaway PostgreSQL server
# is started for the whole run (trust auth, fsync off, 127.0.0.1 on a free
# port) and removed on exit, failure and Ctrl-C included; every PostgreSQL
# test then makes its own database on it (persist/pgtest). Without server
# binaries the PostgreSQL tests skip, unless REQUIRE_POSTGRES=1 makes that
# an error. PG_BINDIR picks the server binaries (see scripts/pg-bindir.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"

log() { echo "test.sh: $*" >&2; }

pg_tmp=""   # throwaway server's directory: data/, socket, log
pg_bin=""   # its binaries
pg_port=""

# as_pg runs a server command as the postgres user when we are root
# (PostgreSQL refuses to run as root), else as ourselves.
as_pg() {
	if [[ $EUID -eq 0 ]]; then
		(cd "$pg_tmp" && runuser -u postgres -- "$@")
	else
		(cd "$pg_tmp" && "$@")
	fi
}

stop_pg() {
	[[ -n "$pg_tmp" ]] || return 0
	if [[ -f "$pg_tmp/data/postmaster.pid" ]]; then
		as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" stop -m immediate -w >/dev/null 2>&1 || true
	fi
	rm -rf "$pg_tmp"
	pg_tmp=""
}

# port_free reports whether nothing accepts connections on 127.0.0.1:$1.
port_free() {
	local rc=0
	timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null || rc=$?
	# 0: something answered; 124: timed out, so something is there too.
	[[ $rc -ne 0 && $rc -ne 124 ]]
}

free_port() {
	local port i
	for i in $(seq 1 100); do
		port=$((20000 + RANDOM % 40000))
		if port_free "$port"; then
			echo "$port"
			return 0
		fi
	done
	return 1
}

start_pg() {
	pg_bin=$1
	pg_tmp=$(mktemp -d -t tollgate-pg.XXXXXX)
	if [[ $EUID -eq 0 ]]; then
		if ! id postgres >/dev/null 2>&1; then
			log "running as root needs a 'postgres' user to run the server as"
			return 1
		fi
		chown postgres: "$pg_tmp"
	fi
	if ! as_pg "$pg_bin/initdb" -D "$pg_tmp/data" -A trust -U postgres -E UTF8 \
		--no-sync >"$pg_tmp/initdb.log" 2>&1; then
		log "initdb failed:"
		cat "$pg_tmp/initdb.log" >&2
		return 1
	fi
	local attempt
	# A port found free can be taken before the server binds it: retry.
	for attempt in 1 2 3 4 5; do
		pg_port=$(free_port) || { log "no free port on 127.0.0.1"; return 1; }
		if as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" -l "$pg_tmp/postgres.log" -w -t 60 \
			-o "-F -k $pg_tmp -p $pg_port -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
			start >/dev/null 2>&1; then
			return 0
		fi
	done
	log "could not start PostgreSQL; server log:"
	tail -n 30 "$pg_tmp/postgres.log" >&2 || true
	return 1
}

trap stop_pg EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${DATABASE_URL:-}" ]]; then
	if bindir=$(scripts/pg-bindir.sh); then
		start_pg "$bindir"
		export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable"
		log "throwaway PostgreSQL ($("$pg_bin/postgres" --version)) on 127.0.0.1:$pg_port"
	elif [[ "${REQUIRE_POSTGRES:-}" == 1 ]]; then
		log "REQUIRE_POSTGRES=1 but DATABASE_URL is unset and no PostgreSQL server" \
			"binaries (initdb, pg_ctl, postgres) were found in /usr/lib/postgresql/*/bin," \
			"pg_config --bindir or PATH: install PostgreSQL or set DATABASE_URL"
		exit 1
	else
		log "DATABASE_URL unset and no PostgreSQL server found: PostgreSQL tests will skip"
	fi
fi

args=("$@")
has_pkg=false
for a in "$@"; do
	case "$a" in ./* | ../* | .) has_pkg=true ;; esac
done
$has_pkg || args+=(./...)
read -r -a extra <<<"${GOTESTFLAGS:-}"

go test -race -count=1 "${extra[@]}" "${args[@]}"
