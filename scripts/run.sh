#!/bin/sh
# `make run`: three llmux-sim nodes on 8001-8003 and llmux on :8000 in front
# of them. Ctrl-C stops everything this script started.
set -e
cd "$(dirname "$0")/.."
BIN=${LLMUX_BIN_DIR:-bin}
PORT=${GATEWAY_PORT:-8000}
MODEL=${MODEL_NAME:-mistralai/Mistral-7B-Instruct-v0.3}
pids=""
cleanup() {
    trap - INT TERM EXIT
    [ -n "$pids" ] && kill $pids 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

nodes=""
for p in 8001 8002 8003; do
    "$BIN/llmux-sim" --host 127.0.0.1 --port "$p" --model "$MODEL" --name "sim-$p" >/dev/null &
    pids="$pids $!"
    nodes="${nodes:+$nodes,}http://127.0.0.1:$p"
done
"$BIN/llmux" --listen "0.0.0.0:$PORT" --nodes "$nodes" --model "$MODEL" &
pids="$pids $!"
sleep 0.5
cat <<MSG

llmux is serving on http://localhost:$PORT in front of three llmux-sim nodes ($nodes).
Try:

  curl -sN http://localhost:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "$MODEL", "stream": true, "messages": [{"role": "user", "content": "Hello!"}]}'

Health: curl -s http://localhost:$PORT/health     Stop: Ctrl-C
MSG
wait
