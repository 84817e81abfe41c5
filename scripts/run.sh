#!/usr/bin/env bash
# make run: the whole stack on this machine: a private redis-server (a unix
# socket in a temporary directory), one millrace-api on $PORT (8000) and one
# millrace-worker serving $MODEL, or the project's demo model (random
# weights) when MODEL is not set. Ctrl-C (or SIGTERM) stops all three.
#
#   MODEL=/path/to/model.gguf make run
#   MODEL=hf:owner/repo/file.gguf make run      (or an https:// URL)
#   PORT=8080 THREADS=2 make run
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8000}
THREADS=${THREADS:-0}
BIN=build

log() { printf '%s run: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$*" >&2; }

model=${MODEL:-}
if [ -z "$model" ]; then
    model=build/models/demo-small-q8_0.gguf
    if [ ! -f "$model" ]; then
        mkdir -p build/models
        "$BIN/millrace-worker" make-model --preset small --type q8_0 --out "$model"
    fi
    log "demo model with random weights (its text is gibberish); set MODEL=... for a real one"
elif [[ "$model" == http://* || "$model" == https://* || "$model" == hf:* ]]; then
    log "MODEL=$model: the worker downloads it into its cache (once; HF_TOKEN for gated repos)"
elif [ ! -f "$model" ]; then
    log "MODEL=$model: no such file"
    exit 2
fi

dir=$(mktemp -d /tmp/millrace-run-XXXXXX)
pids=()
stopped=0
stop() {
    [ "$stopped" = 1 ] && return
    stopped=1
    trap - INT TERM EXIT
    log "stopping"
    # the worker and the API first (the worker hands back and deregisters), Redis last
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    rm -rf "$dir"
    log "stopped"
}
trap stop INT TERM EXIT

# Redis listens on a unix socket in the temporary directory: no port to clash
# each child in its own session: Ctrl-C reaches only this script, which stops
# them in order
setsid redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --dir "$dir" \
    --daemonize no --appendonly yes --appendfsync everysec --save '' \
    --maxmemory-policy noeviction --logfile "$dir/redis.log" &
pids+=($!)
for _ in $(seq 100); do redis-cli -s "$dir/redis.sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis="$dir/redis.sock"
log "redis-server on $redis (data in $dir)"

setsid "$BIN/millrace-api" --host 127.0.0.1 --port "$PORT" --redis "$redis" &
pids+=($!)
setsid "$BIN/millrace-worker" serve --model "$model" --redis "$redis" --threads "$THREADS" &
pids+=($!)

for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
cat >&2 <<MSG

millrace is up on http://127.0.0.1:$PORT  (Ctrl-C stops it). Try:

  curl -s http://127.0.0.1:$PORT/generate -H 'Content-Type: application/json' \\
       -d '{"text": "Once upon a time", "max_tokens": 32}'

MSG
# until one of them ends, or Ctrl-C
wait -n "${pids[@]}" || true
[ "$stopped" = 1 ] || log "a process ended; stopping the others"
stop
