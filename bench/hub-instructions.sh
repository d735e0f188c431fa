#!/usr/bin/env bash
# User-space instructions one hub node spends per delivery, counted by callgrind.
#
# Usage: bench/hub-instructions.sh [TETHER_BIN]   (default: target/release/tether)
# Env:   REDIS_URL (redis://127.0.0.1:6379), SUBS (100), RATE (20 msg/s)
#
# One `tether hub` node (Redis broker, its own key prefix) runs under
# `valgrind --tool=callgrind` on CPU 0; `tether bench fanout` on CPU 1 subscribes SUBS
# clients and publishes RATE msg/s, once for 10 s and once for 20 s. The figure is
# (instructions of the 20 s run − the 10 s run) ÷ (deliveries of the 20 s run − the 10 s
# run): start-up, subscriptions and shutdown cancel. At 20 msg/s each write carries one
# message, so this is the cost of the fan-out loop itself. Kernel work is not counted.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TETHER=${1:-$ROOT/target/release/tether}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
SUBS=${SUBS:-100} RATE=${RATE:-20}
WORK=$(mktemp -d /tmp/tether-hub-instructions.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
command -v valgrind >/dev/null || { echo "hub-instructions.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
[ -x "$TETHER" ] || { echo "hub-instructions.sh: no tether binary at $TETHER (cargo build --release)" >&2; exit 2; }

# run STEP — prints "INSTRUCTIONS DELIVERIES" for one run of STEP.
run() {
  local step=$1 port=7451 prefix="tether-hubinstr-$$-$1" pid out i
  TETHER_LOG=warn taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$step.%p" \
    "$TETHER" hub --listen "127.0.0.1:$port" --name hubinstr --broker "$REDIS_URL/0" \
    --redis-prefix "$prefix" --client-rate 1000000 --client-burst 1000000 \
    >/dev/null 2>"$WORK/hub.$step.log" &
  pid=$!
  for i in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
  out=$(taskset -c 1 "$TETHER" bench --threads 1 fanout --hub "ws://127.0.0.1:$port" \
    --subscribers "$SUBS" --rate "$RATE" --max-rate "$RATE" --step "$step" --drain 2s \
    --p99-bound 1s 2>>"$WORK/bench.log")
  kill -INT "$pid"; wait "$pid" || true
  if command -v redis-cli >/dev/null; then
    redis-cli -u "$REDIS_URL" --scan --pattern "$prefix*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null || true
  fi
  printf '%s %s\n' \
    "$(cat "$WORK"/cg."$step".* | awk '/^summary:/ {s += $2} END {print s}')" \
    "$(printf '%s' "$out" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).steps.reduce((n,x)=>n+x.delivered,0)))')"
}

read -r short_ir short_n < <(run 10s)
read -r long_ir long_n < <(run 20s)
echo "instructions per delivery: $(( (long_ir - short_ir) / (long_n - short_n) )) ($SUBS subscribers × $RATE msg/s; runs of $short_n and $long_n deliveries)"
