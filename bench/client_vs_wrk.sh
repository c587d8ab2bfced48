#!/bin/sh
# bench/client_vs_wrk.sh - is llmux-bench ever the bottleneck? It and wrk, in
# turns within one run, drive the same small non-streaming chat request at one
# `llmux-sim --fast` (pinned to core 1) from core 0, with the same number of
# keep-alive connections. Prints a markdown table: requests/s each client got,
# each client's own CPU (user+sys from /usr/bin/time) per 100k requests, and
# how busy the server's core was meanwhile (100 % = the server is the limit).
#
#   bench/client_vs_wrk.sh [DURATION_S] [CONNECTIONS] [ROUNDS]
#
# Needs wrk and /usr/bin/time (Debian packages `wrk`, `time`).
set -e
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-64}
ROUNDS=${3:-3}
BIN=${LLMUX_BIN_DIR:-bin}
for t in wrk /usr/bin/time taskset; do
    command -v "$t" >/dev/null || { echo "bench/client_vs_wrk.sh needs $t" >&2; exit 1; }
done
make --no-print-directory "$BIN/llmux-sim" "$BIN/llmux-bench" >/dev/null

tmp=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM

taskset -c 1 "$BIN/llmux-sim" --port 0 --fast --log-level warn >"$tmp/sim.out" 2>/dev/null &
pid=$!
for _ in $(seq 50); do grep -q listening "$tmp/sim.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$tmp/sim.out")
URL="http://127.0.0.1:$PORT"

# The very body llmux-bench sends with --model m --prompt-tokens 1 --max-tokens 4.
cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"Expl"}],"max_tokens":4,"stream":false}'
wrk.headers["Content-Type"] = "application/json"
LUA

cpu() { # time file -> user+sys seconds
    awk '{print $1 + $2}' "$1"
}
HZ=$(getconf CLK_TCK)
sim_ticks() { # the server's utime + stime, in clock ticks
    awk '{print $14 + $15}' "/proc/$pid/stat"
}
sim_busy() { # ticks before -> % of one core since, over DUR seconds
    echo "$1 $(sim_ticks)" | awk -v hz="$HZ" -v d="$DUR" '{printf "%.0f %%", ($2 - $1) * 100 / hz / d}'
}
echo "| round | client | requests | requests/s | client CPU s | client CPU s per 100k requests | server core busy |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for i in $(seq "$ROUNDS"); do
    s0=$(sim_ticks)
    taskset -c 0 /usr/bin/time -o "$tmp/t" -f "%U %S" \
        wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$tmp/post.lua" "$URL/v1/chat/completions" >"$tmp/wrk"
    n=$(awk '/requests in/ {print $1}' "$tmp/wrk")
    rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk")
    c=$(cpu "$tmp/t")
    busy=$(sim_busy "$s0")
    per=$(echo "$c $n" | awk '{printf "%.2f", $1 * 1e5 / $2}')
    echo "| $i | wrk -t1 -c$CONNS | $n | $rps | $c | $per | $busy |"

    s0=$(sim_ticks)

    taskset -c 0 /usr/bin/time -o "$tmp/t" -f "%U %S" \
        "$BIN/llmux-bench" run --mode concurrent --concurrency "$CONNS" --duration "$DUR" \
        --model m --prompt-tokens 1 --max-tokens 4 --base-url "$URL" --no-progress \
        --output "$tmp/b.json" >/dev/null
    busy=$(sim_busy "$s0")
    set -- $(/usr/bin/python3 -c "import json, sys
r = json.load(open(sys.argv[1]))['runs']['concurrent']
print(r['num_requests'], '%.2f' % r['requests_per_second'], r['errors'])" "$tmp/b.json")
    c=$(cpu "$tmp/t")
    per=$(echo "$c $1" | awk '{printf "%.2f", $1 * 1e5 / $2}')
    echo "| $i | llmux-bench -c $CONNS | $1 ($3 errors) | $2 | $c | $per | $busy |"
done
