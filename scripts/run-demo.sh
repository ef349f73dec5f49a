#!/usr/bin/env bash
# make run: two demo backends on 127.0.0.1:8081/8082 and Tollgate on :8080
# with the embedded store and config.json; creates (or reuses) a demo client
# and prints a curl line with its key and the dashboard's URL. Ctrl-C stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-config.json}
ADMIN=${ADMIN:-http://127.0.0.1:8080}
mkdir -p bin
go build -o bin/ ./cmd/tollgate ./cmd/echoback

pids=()
stop() {
	trap - INT TERM EXIT
	# Last started first: Tollgate drains its in-flight requests while the
	# backends they go to are still up.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
}
trap stop EXIT
trap 'exit 130' INT TERM

# Job control puts each child in its own process group, so a Ctrl-C in the
# terminal reaches this script alone, and stop sends each child exactly one
# SIGTERM. Without it Tollgate would get the terminal's SIGINT and then
# stop's SIGTERM, and a second signal makes it exit at once, cutting its
# graceful shutdown (in-flight requests, the final state flush).
set -m

./bin/echoback -addr 127.0.0.1:8081 -name backend-1 >/dev/null 2>&1 & pids+=($!)
./bin/echoback -addr 127.0.0.1:8082 -name backend-2 >/dev/null 2>&1 & pids+=($!)
./bin/tollgate -config "$CONFIG" & pids+=($!)

for _ in $(seq 1 100); do
	curl -fsS "$ADMIN/healthz" >/dev/null 2>&1 && break
	kill -0 "${pids[2]}" 2>/dev/null || { echo "tollgate did not start" >&2; exit 1; }
	sleep 0.1
done

auth=()
[ -n "${TOLLGATE_ADMIN_KEY:-}" ] && auth=(-H "Authorization: Bearer $TOLLGATE_ADMIN_KEY")
body=$(curl -sS "${auth[@]}" -X POST "$ADMIN/clients" -H 'Content-Type: application/json' -d '{"client_id":"demo"}')
if ! grep -q '"api_key"' <<<"$body"; then
	# Already there from an earlier run: reuse it, or rotate when its key is
	# hashed at rest and cannot be shown again.
	body=$(curl -sS "${auth[@]}" "$ADMIN/clients/demo")
	grep -q '"api_key"' <<<"$body" || body=$(curl -sS "${auth[@]}" -X POST "$ADMIN/clients/demo/rotate-key")
fi
key=$(sed -n 's/.*"api_key" *: *"\([^"]*\)".*/\1/p' <<<"$body")

cat <<MSG

Tollgate is up on :8080 (admin API on the same port), backends on :8081 and :8082.
Try:
  curl -i -H 'Authorization: Bearer $key' http://127.0.0.1:8080/hello
  curl -s http://127.0.0.1:8080/backends
Dashboard: $ADMIN/ui/  (open it in a browser on this machine${TOLLGATE_ADMIN_KEY:+; sign in with \$TOLLGATE_ADMIN_KEY})
API description: $ADMIN/openapi.json
Ctrl-C stops everything.
MSG
wait "${pids[2]}"
