#!/bin/sh
# bench/relay.sh - small non-streaming requests at saturation, direct to one
# llmux-sim versus through llmux, side by side in one run. The node and the
# gateway share core 1; wrk runs on core 0. Prints a markdown table.
#
#   bench/relay.sh [DURATION_S] [CONNECTIONS] [ROUNDS]
#
# Needs wrk (Debian package `wrk`): installed when missing and run as root.
set -e
cd "$(dirname "$0")/.."
DUR=${1:-8}
CONNS=${2:-32}
ROUNDS=${3:-3}
BIN=${LLMUX_BIN_DIR:-bin}
command -v wrk >/dev/null || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq wrk >/dev/null; }
command -v wrk >/dev/null || { echo "bench/relay.sh needs wrk: apt-get install wrk" >&2; exit 1; }
make --no-print-directory all >/dev/null

tmp=$(mktemp -d)
pids=""
cleanup() { [ -n "$pids" ] && kill $pids 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM

taskset -c 1 "$BIN/llmux-sim" --port 0 --fast >"$tmp/sim.out" 2>/dev/null &
pids="$pids $!"
for _ in $(seq 50); do grep -q listening "$tmp/sim.out" 2>/dev/null && break; sleep 0.1; done
SIM_PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$tmp/sim.out")
taskset -c 1 "$BIN/llmux" --listen 127.0.0.1:0 --workers 1 --log-level warn \
    --nodes "http://127.0.0.1:$SIM_PORT" 2>"$tmp/llmux.err" &
pids="$pids $!"
LX_PORT=""
for _ in $(seq 50); do
    LX_PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$tmp/llmux.err")
    [ -n "$LX_PORT" ] && break; sleep 0.1
done

cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
wrk.headers["Content-Type"] = "application/json"
LUA

run() { # url -> "rps p50 p99"
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$tmp/post.lua" "$1" |
        awk '/Requests\/sec/ {r=$2} / 50%/ {p50=$2} / 99%/ {p99=$2} END {print r, p50, p99}'
}
echo "| round | target | requests/s | p50 | p99 |"
echo "| --- | --- | --- | --- | --- |"
for i in $(seq "$ROUNDS"); do
    set -- $(run "http://127.0.0.1:$SIM_PORT/v1/chat/completions")
    echo "| $i | direct to llmux-sim | $1 | $2 | $3 |"
    set -- $(run "http://127.0.0.1:$LX_PORT/v1/chat/completions")
    echo "| $i | through llmux | $1 | $2 | $3 |"
done
