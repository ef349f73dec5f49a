# pg-throwaway.sh is sourced by the bench scripts: pg_throwaway starts a
# throwaway PostgreSQL server (a temp dir, a random loopback port, no
# fsync) and exports DATABASE_URL; pg_throwaway_stop, which the caller
# runs on EXIT, stops it and removes the dir. initdb and postgres refuse
# to run as root: as root they run as the postgres user.
pg_tmp=""

pg_throwaway_as_pg() {
	if [[ $EUID -eq 0 ]]; then (cd "$pg_tmp" && runuser -u postgres -- "$@"); else (cd "$pg_tmp" && "$@"); fi
}

pg_throwaway_stop() {
	if [[ -n $pg_tmp ]]; then
		pg_throwaway_as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" stop -m immediate -w >/dev/null 2>&1 || true
		rm -rf "$pg_tmp"
		pg_tmp=""
	fi
}

pg_throwaway() {
	pg_bin=$(scripts/pg-bindir.sh)
	pg_tmp=$(mktemp -d -t tollgate-bench-pg.XXXXXX)
	[[ $EUID -ne 0 ]] || chown postgres: "$pg_tmp"
	pg_throwaway_as_pg "$pg_bin/initdb" -D "$pg_tmp/data" -A trust -U postgres -E UTF8 --no-sync >"$pg_tmp/initdb.log"
	local attempt port
	# A random port may be taken: try a few.
	for attempt in 1 2 3 4 5; do
		port=$((20000 + RANDOM % 40000))
		if pg_throwaway_as_pg "$pg_bin/pg_ctl" -D "$pg_tmp/data" -l "$pg_tmp/postgres.log" -w -t 60 \
			-o "-F -k $pg_tmp -p $port -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200" \
			start >/dev/null; then
			export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
			return 0
		fi
	done
	tail -n 20 "$pg_tmp/postgres.log" >&2
	return 1
}
