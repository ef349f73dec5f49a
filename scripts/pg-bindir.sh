#!/usr/bin/env bash
# pg-bindir.sh prints the directory holding the PostgreSQL server binaries
# (initdb, pg_ctl, postgres) and exits 0, or exits 1 when there is none.
# Searched in order: the highest /usr/lib/postgresql/<version>/bin (Debian,
# Ubuntu), pg_config --bindir, then PATH. PG_BINDIR, when set, is the only
# place looked at.
set -euo pipefail

has_server() { [[ -x "$1/initdb" && -x "$1/pg_ctl" && -x "$1/postgres" ]]; }

if [[ -n "${PG_BINDIR:-}" ]]; then
	if has_server "$PG_BINDIR"; then
		echo "$PG_BINDIR"
		exit 0
	fi
	exit 1
fi

while IFS= read -r dir; do
	if has_server "$dir"; then
		echo "$dir"
		exit 0
	fi
done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -V -r)

if command -v pg_config >/dev/null 2>&1; then
	dir=$(pg_config --bindir 2>/dev/null || true)
	if [[ -n "$dir" ]] && has_server "$dir"; then
		echo "$dir"
		exit 0
	fi
fi

if initdb=$(command -v initdb 2>/dev/null); then
	dir=$(dirname "$initdb")
	if has_server "$dir"; then
		echo "$dir"
		exit 0
	fi
fi
exit 1
