#!/usr/bin/env bash
# fuzz.sh runs every fuzz target of the module, one after the other, for
# FUZZTIME each (make fuzz; default 30s). go test -fuzz takes one target
# per run, so the targets are found by their "func FuzzX(" lines in the
# _test.go files, and a new target is picked up without editing this file.
#
#   FUZZTIME=10s scripts/fuzz.sh           # every target
#   scripts/fuzz.sh ./actors ./httpapi     # only these packages
#
# The seed corpora (f.Add and testdata/fuzz/FuzzX/) also run in make test.
# A failure stops the run; go test writes the failing input to
# testdata/fuzz/FuzzX/ beside the target, where it becomes a seed once the
# bug is fixed. Prints "executions per target" at the end.
#
# FUZZMINIMIZETIME (default 2s) caps the minimizing of each new interesting
# input, during which no executions count; go test's 60s default can eat a
# short run whole.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"

FUZZTIME=${FUZZTIME:-30s}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-2s}
dirs=("$@")
if [[ ${#dirs[@]} -eq 0 ]]; then
	dirs=(.)
fi

# targets prints "<package dir> <target>" for each fuzz target under dirs.
targets() {
	grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+\(' "${dirs[@]}" |
		sed -E 's|^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+)\($|\1 \2|' |
		sed -E 's|^\./||' | sort -u
}

mapfile -t list < <(targets)
if [[ ${#list[@]} -eq 0 ]]; then
	echo "fuzz.sh: no fuzz targets under ${dirs[*]}" >&2
	exit 1
fi
echo "fuzz.sh: ${#list[@]} targets, $FUZZTIME each" >&2

summary=()
for entry in "${list[@]}"; do
	read -r dir name <<<"$entry"
	pkg="./$dir"
	echo "--- $pkg $name" >&2
	log=$(mktemp)
	rc=0
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" \
		"$pkg" 2>&1 | tee "$log" || rc=$?
	# The last progress line carries the total: "execs: N (R/sec)".
	execs=$(grep -Eo 'execs: [0-9]+' "$log" | tail -n 1 | grep -Eo '[0-9]+' || echo "?")
	rm -f "$log"
	summary+=("$(printf '%-32s %-24s %12s' "$pkg" "$name" "$execs")")
	if [[ $rc -ne 0 ]]; then
		echo "fuzz.sh: $pkg $name failed" >&2
		exit "$rc"
	fi
done

echo
echo "executions per target ($FUZZTIME each):"
printf '%s\n' "${summary[@]}"
