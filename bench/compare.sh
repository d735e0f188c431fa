#!/usr/bin/env bash
# Side-by-side benchmark: tether proxy vs HAProxy vs nginx (and direct), plain and over TLS,
# and tether hub vs Socket.IO with its Redis adapter. Prints one table and writes it to
# bench/results/latest.md; a full run (neither --quick nor --skip-*) also writes it into
# docs/bench.md and the README's headline table, between their bench:results /
# bench:headline markers.
#
# Usage: bench/compare.sh [--quick] [--skip-proxies] [--skip-tls] [--skip-hub] [--no-build]
#                         [--no-ring] [--instructions] [--no-docs]
#   --quick         short runs (smoke test of the script, numbers not meaningful)
#   --skip-proxies  only the hub fan-out comparison (no plain and no TLS proxy rows)
#   --skip-tls      no TLS rows (wss:// through each proxy, ECDSA P-256 and RSA-2048)
#   --skip-hub      only the proxy comparison
#   --no-build      use the existing release binaries
#   --no-ring       measure tether with its default crypto provider (aws-lc-rs) only, not
#                   also a build with --features crypto-ring
#   --rounds N      measure every proxy N times, in turn, and report medians (default 3)
#   --instructions  also count each proxy's user-space instructions per round trip and per
#                   full TLS handshake under callgrind: deterministic where CPU time on a
#                   shared machine is not (~10 min)
#   --no-docs       a full run leaves docs/bench.md and README.md alone
# Environment: CARGO_TARGET_DIR (where the release binary is built), TETHER_BIN (use this
# binary instead), TETHER_RING_BIN (the crypto-ring build to use; without it the script builds
# one, or with --no-build skips it), SERVER_CPU (0) and CLIENT_CPU (1): servers under test are
# pinned to one CPU, the load generator and echo backends to the other. REDIS_URL
# (redis://127.0.0.1:6379). WRITE_DELAY (10ms): the hub's --write-delay for its second,
# batched fan-out run.
#
# Runs unattended in about 25 minutes on a 2-core machine (10 without TLS). Needs root only
# to install haproxy/nginx/valgrind when they are missing; needs openssl for the certificates.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
WRITE_DELAY=${WRITE_DELAY:-10ms}
QUICK=0 SKIP_PROXIES=0 SKIP_TLS=0 SKIP_HUB=0 BUILD=1 RING=1 ROUNDS= INSTRUCTIONS=0 DOCS=1
ARGS=("$@")
while [ $# -gt 0 ]; do
  arg=$1; shift
  case "$arg" in
    --rounds) ROUNDS=${1:?--rounds needs a number}; shift ;;
    --quick) QUICK=1 ;;
    --skip-proxies) SKIP_PROXIES=1 ;;
    --skip-tls) SKIP_TLS=1 ;;
    --skip-hub) SKIP_HUB=1 ;;
    --no-build) BUILD=0 ;;
    --no-ring) RING=0 ;;
    --instructions) INSTRUCTIONS=1 ;;
    --no-docs) DOCS=0 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

# Three short rounds, each measuring every target once in turn, give medians that one long
# run per target cannot: on a shared machine a burst of outside load lands on one target.
if [ "$QUICK" = 1 ]; then
  DUR=2s WARM=500ms IDLE_N=1000 HS_DUR=2s STEP=2s MAX_RATE=80 SUBS=200 ROUNDS=${ROUNDS:-1}
else
  DUR=5s WARM=1s IDLE_N=8000 HS_DUR=4s STEP=4s MAX_RATE=20000 SUBS=1000 ROUNDS=${ROUNDS:-3}
fi
case "$ROUNDS" in ''|*[!0-9]*|0) echo "compare.sh: --rounds must be a positive number" >&2; exit 2 ;; esac
ROUND=1

# Ports: echo backends, the three proxies, tether's admin, hub nodes.
ECHO_PORTS=(19001 19002 19003)
PORT_TETHER=18080 PORT_HAPROXY=18081 PORT_NGINX=18082 PORT_ADMIN=19090
SIO_PORTS=(7101 7102) HUB_PORTS=(7201 7202)

WORK=$(mktemp -d /tmp/tether-compare.XXXXXX)
RESULTS=$WORK/results.jsonl
: > "$RESULTS"
STARTED=()   # PIDs this script started; stopped on exit, one by one.
ECHO_RUNNING=0

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# Stops one process we started and waits until it is gone.
stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

wait_port() {
  local port=$1 i
  for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "nothing listens on 127.0.0.1:$port after 10 s"
  return 1
}

# Every process of the server gets 20000 fds: 8000 idle tunnels are 16000 sockets in a proxy.
ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)

install_peers() {
  if command -v haproxy >/dev/null && command -v nginx >/dev/null; then return; fi
  log "installing haproxy and nginx from Debian's packages"
  # Keep the packages' service units from starting system daemons: we run our own by hand.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy nginx
  if [ "$created" = 1 ]; then rm -f "$policy"; fi
}

# Whether any TLS figure is measured: the TLS rows, or the TLS handshakes under callgrind.
tls_wanted() {
  [ "$SKIP_TLS" = 0 ] && { [ "$SKIP_PROXIES" = 0 ] || [ "$INSTRUCTIONS" = 1 ]; }
}

# Sets TETHER, and TETHER_RING when the crypto-ring build is measured too (empty if not).
# Cargo keeps each feature set's artifacts apart, so after the first time switching between
# the two builds only relinks.
build_tether() {
  local target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
  TETHER_RING=
  if [ "$RING" = 1 ] && tls_wanted; then
    if [ -n "${TETHER_RING_BIN:-}" ]; then
      TETHER_RING=$TETHER_RING_BIN
    elif [ "$BUILD" = 1 ]; then
      log "building tether --release --features crypto-ring"
      (cd "$ROOT" && cargo build --release -p tether --features crypto-ring)
      cp "$target_dir/release/tether" "$WORK/tether-ring"
      TETHER_RING=$WORK/tether-ring
    else
      log "--no-build without TETHER_RING_BIN: the ring provider is not measured"
    fi
    if [ -n "$TETHER_RING" ] && [ ! -x "$TETHER_RING" ]; then
      log "no tether binary at $TETHER_RING"; exit 1
    fi
  fi
  if [ -n "${TETHER_BIN:-}" ]; then TETHER=$TETHER_BIN; return; fi
  TETHER=$target_dir/release/tether
  if [ "$BUILD" = 1 ]; then
    log "building tether --release"
    (cd "$ROOT" && cargo build --release -p tether)
  fi
  [ -x "$TETHER" ] || { log "no tether binary at $TETHER"; exit 1; }
}

# run_bench TARGET RUN MODE ARGS... — one generator run on the client CPU; its JSON line is
# stored with the target and run names (null when the run failed, so the table shows n/a).
run_bench() {
  local target=$1 run=$2 line
  shift 2
  log "$target: $run (round $ROUND/$ROUNDS)"
  if line=$(taskset -c "$CLIENT_CPU" "$TETHER" bench --threads 1 "$@" 2>>"$WORK/bench.log"); then
    printf '{"target":"%s","run":"%s","round":%s,"result":%s}\n' "$target" "$run" "$ROUND" "$line" >> "$RESULTS"
  else
    log "$target: $run failed (see $WORK/bench.log):"
    tail -n 3 "$WORK/bench.log" >&2
    printf '{"target":"%s","run":"%s","round":%s,"result":null}\n' "$target" "$run" "$ROUND" >> "$RESULTS"
  fi
}

start_echo_backends() {
  local args=() i=1 port
  for port in "${ECHO_PORTS[@]}"; do
    args+=(--listen "127.0.0.1:$port" --name "b$i"); i=$((i + 1))
  done
  taskset -c "$CLIENT_CPU" "$TETHER" bench --threads 1 echo "${args[@]}" \
    > "$WORK/echo.out" 2> "$WORK/echo.log" &
  STARTED+=($!)
  for port in "${ECHO_PORTS[@]}"; do wait_port "$port"; done
  ECHO_RUNNING=1
}

write_configs() {
  local port
  {
    printf 'global\n  nbthread 1\n  maxconn 9500\n  ulimit-n %s\n  log stderr format raw local0 err\n\n' "$FD_LIMIT"
    printf 'defaults\n  mode http\n  maxconn 9500\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\n'
    printf 'frontend fe\n  bind 127.0.0.1:%s\n  default_backend echo\n\n' "$PORT_HAPROXY"
    printf 'backend echo\n  balance url_param sid\n  hash-type consistent\n'
    local i=1
    for port in "${ECHO_PORTS[@]}"; do printf '  server b%s 127.0.0.1:%s\n' "$i" "$port"; i=$((i + 1)); done
  } > "$WORK/haproxy.cfg"

  mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
  {
    printf 'worker_processes 1;\nworker_rlimit_nofile %s;\ndaemon off;\npid %s/nginx/nginx.pid;\n' "$FD_LIMIT" "$WORK"
    printf 'error_log %s/nginx/logs/error.log warn;\n' "$WORK"
    printf 'events { worker_connections 19000; }\n'
    printf 'http {\n  access_log off;\n'
    printf '  client_body_temp_path %s/nginx/tmp/body;\n  proxy_temp_path %s/nginx/tmp/proxy;\n' "$WORK" "$WORK"
    printf '  fastcgi_temp_path %s/nginx/tmp/fcgi;\n  uwsgi_temp_path %s/nginx/tmp/uwsgi;\n  scgi_temp_path %s/nginx/tmp/scgi;\n' "$WORK" "$WORK" "$WORK"
    printf '  map $http_upgrade $connection_upgrade { default upgrade; "" close; }\n'
    printf '  upstream echo {\n    hash $arg_sid consistent;\n'
    for port in "${ECHO_PORTS[@]}"; do printf '    server 127.0.0.1:%s;\n' "$port"; done
    printf '  }\n  server {\n    listen 127.0.0.1:%s;\n    location / {\n' "$PORT_NGINX"
    printf '      proxy_pass http://echo;\n      proxy_http_version 1.1;\n'
    printf '      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n'
    printf '      proxy_read_timeout 1h;\n      proxy_send_timeout 1h;\n    }\n  }\n}\n'
  } > "$WORK/nginx.conf"

  {
    printf '[listen]\naddr = "127.0.0.1:%s"\n\n[admin]\naddr = "127.0.0.1:%s"\n\n' "$PORT_TETHER" "$PORT_ADMIN"
    printf '[runtime]\nworkers = 1\n\n[balance]\nstrategy = "consistent-hash"\nkey = "query:sid"\n'
    printf 'balance_factor = 0      # off, to match the peers'"'"' plain consistent hash\n\n'
    printf '[timeouts]\ntunnel_idle = "0s"     # no idle timeout, like the peers'"'"' 1h\n\n'
    printf '[health]\nkind = "tcp"\n'
    local i=1
    for port in "${ECHO_PORTS[@]}"; do
      printf '\n[[backend]]\nname = "b%s"\naddr = "127.0.0.1:%s"\n' "$i" "$port"; i=$((i + 1))
    done
  } > "$WORK/tether.toml"
}

# start_server NAME PORT COMMAND... — starts a server pinned to the server CPU; sets SERVER_PIDS
# to every process of it (nginx: master and worker).
start_server() {
  local name=$1 port=$2 pid child
  shift 2
  taskset -c "$SERVER_CPU" "$@" > "$WORK/$name.out" 2> "$WORK/$name.log" &
  pid=$!
  STARTED+=("$pid")
  wait_port "$port" || { tail -n 5 "$WORK/$name.log" >&2; return 1; }
  sleep 0.5
  SERVER_PIDS=("$pid")
  for child in $(pgrep -P "$pid" || true); do SERVER_PIDS+=("$child"); done
  SERVER_MAIN=$pid
}

# measure TARGET URL — the full proxy suite against one target (watching SERVER_PIDS).
measure() {
  local target=$1 url=$2 watch=() pid
  for pid in "${SERVER_PIDS[@]}"; do watch+=(--watch-pid "$pid"); done
  # Idle first, on a freshly started server: memory freed by earlier runs and kept by the
  # allocator would otherwise hide part of the tunnels' cost.
  if [ "${#watch[@]}" -gt 0 ]; then
    run_bench "$target" idle idle --url "$url" --connections "$IDLE_N" --sources 8 \
      --hold 2s --settle 1s --sample 100 "${watch[@]}"
  fi
  run_bench "$target" lat1 pingpong --url "$url" --connections 1 --size 64 \
    --duration "$DUR" --warmup "$WARM" "${watch[@]}"
  run_bench "$target" lat64 pingpong --url "$url" --connections 64 --size 64 \
    --duration "$DUR" --warmup "$WARM" --sources 4 "${watch[@]}"
  run_bench "$target" tput pingpong --url "$url" --connections 64 --size 4096 \
    --duration "$DUR" --warmup "$WARM" --sources 4 "${watch[@]}"
  if [ "${#watch[@]}" -gt 0 ]; then
    run_bench "$target" handshake handshake --url "$url" --concurrency 16 \
      --duration "$HS_DUR" --warmup 1s --sources 16 "${watch[@]}"
  fi
}

proxy_suite() {
  install_peers
  write_configs
  start_echo_backends
  "$TETHER" check --config "$WORK/tether.toml" >&2
  for ROUND in $(seq "$ROUNDS"); do
    SERVER_PIDS=()
    measure direct "ws://127.0.0.1:${ECHO_PORTS[0]}/ws"

    start_server haproxy "$PORT_HAPROXY" haproxy -db -f "$WORK/haproxy.cfg"
    measure haproxy "ws://127.0.0.1:$PORT_HAPROXY/ws"
    stop_pid "$SERVER_MAIN"

    start_server nginx "$PORT_NGINX" nginx -p "$WORK/nginx" -c "$WORK/nginx.conf"
    measure nginx "ws://127.0.0.1:$PORT_NGINX/ws"
    stop_pid "$SERVER_MAIN"

    # Access logs off, as the peers run: nginx has `access_log off`, HAProxy logs errors only.
    start_server tether "$PORT_TETHER" env TETHER_LOG=warn "$TETHER" proxy --config "$WORK/tether.toml"
    measure tether "ws://127.0.0.1:$PORT_TETHER/ws"
    stop_pid "$SERVER_MAIN"
  done
  ROUND=1
}

# --- TLS: each proxy terminates wss:// and speaks plain WebSocket to the same echo backends.

# The key types every proxy is measured with, in order; each gets its own CA and certificate.
TLS_KEYS=(ecdsa rsa)

# make_cert KEY — a throw-away CA and a certificate for 127.0.0.1/localhost signed by it, in
# $WORK/tls-KEY: site.pem (leaf only), site.key (PKCS#8), haproxy.pem (both, as HAProxy wants
# them), ca.pem (what the generator trusts). One certificate serves all three proxies.
make_cert() {
  local key=$1 dir=$WORK/tls-$1 newkey
  case "$key" in
    ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
  esac
  mkdir -p "$dir"
  openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj "/CN=tether bench CA ($key)" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>>"$WORK/openssl.log"
  openssl req "${newkey[@]}" -nodes -subj "/CN=localhost" \
    -keyout "$dir/site.key" -out "$dir/site.csr" 2>>"$WORK/openssl.log"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > "$dir/ext.cnf"
  openssl x509 -req -in "$dir/site.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/ext.cnf" -out "$dir/site.pem" 2>>"$WORK/openssl.log"
  cat "$dir/site.pem" "$dir/site.key" > "$dir/haproxy.pem"
}

# write_tls_configs KEY — the plain configurations (write_configs) with TLS 1.3 termination
# on the same ports, in $WORK/tls-KEY. Each proxy's own defaults otherwise (session tickets
# on for all three; the generator never resumes).
write_tls_configs() {
  local dir=$WORK/tls-$1
  sed "s|^  bind 127.0.0.1:$PORT_HAPROXY\$|  bind 127.0.0.1:$PORT_HAPROXY ssl crt $dir/haproxy.pem ssl-min-ver TLSv1.3 alpn http/1.1|" \
    "$WORK/haproxy.cfg" > "$dir/haproxy.cfg"
  sed "s|listen 127.0.0.1:$PORT_NGINX;|listen 127.0.0.1:$PORT_NGINX ssl;\n    ssl_certificate $dir/site.pem;\n    ssl_certificate_key $dir/site.key;\n    ssl_protocols TLSv1.3;|" \
    "$WORK/nginx.conf" > "$dir/nginx.conf"
  sed -e 's|^\[listen\]$|[[listen]]|' \
    -e "s|^addr = \"127.0.0.1:$PORT_TETHER\"\$|&\n\n[listen.tls]\ncert = \"$dir/site.pem\"\nkey = \"$dir/site.key\"\nmin_version = \"1.3\"|" \
    "$WORK/tether.toml" > "$dir/tether.toml"
  grep -q "ssl crt" "$dir/haproxy.cfg" && grep -q "ssl_protocols" "$dir/nginx.conf" &&
    grep -q "listen.tls" "$dir/tether.toml" || { log "TLS configurations not written ($dir)"; exit 1; }
  "$TETHER" check --config "$dir/tether.toml" >&2
}

# The proxies measured over TLS, in turn (tether-ring: the crypto-ring build).
tls_targets() {
  echo haproxy nginx tether
  [ -z "$TETHER_RING" ] || echo tether-ring
}

# tls_command TARGET KEY — sets TLS_PORT and TLS_CMD, the command that runs TARGET
# terminating TLS with KEY's certificate.
tls_command() {
  local target=$1 dir=$WORK/tls-$2
  case "$target" in
    haproxy) TLS_PORT=$PORT_HAPROXY; TLS_CMD=(haproxy -db -f "$dir/haproxy.cfg") ;;
    nginx) TLS_PORT=$PORT_NGINX; TLS_CMD=(nginx -p "$WORK/nginx" -c "$dir/nginx.conf") ;;
    tether) TLS_PORT=$PORT_TETHER; TLS_CMD=("$TETHER" proxy --config "$dir/tether.toml") ;;
    tether-ring) TLS_PORT=$PORT_TETHER; TLS_CMD=("$TETHER_RING" proxy --config "$dir/tether.toml") ;;
  esac
}

# measure_tls TARGET KEY — the TLS figures of one running proxy (watching SERVER_PIDS).
# Round trips and idle memory do not depend on the certificate's key, so they are measured
# with the first key type only; handshakes with each.
measure_tls() {
  local target=$1 key=$2 url="wss://127.0.0.1:$TLS_PORT/ws" ca=(--ca "$WORK/tls-$2/ca.pem") watch=() pid
  for pid in "${SERVER_PIDS[@]}"; do watch+=(--watch-pid "$pid"); done
  if [ "$key" = "${TLS_KEYS[0]}" ]; then
    run_bench "$target" tls-idle idle --url "$url" "${ca[@]}" --connections "$IDLE_N" --sources 8 \
      --hold 2s --settle 1s --sample 100 "${watch[@]}"
    local conns size
    for conns in 1 64; do
      for size in 128 4096; do
        run_bench "$target" "tls-rt$conns-$size" pingpong --url "$url" "${ca[@]}" --connections "$conns" \
          --size "$size" --duration "$DUR" --warmup "$WARM" --sources 4 "${watch[@]}"
      done
    done
  fi
  run_bench "$target" "tls-hs-$key" handshake --url "$url" "${ca[@]}" --concurrency 16 \
    --duration "$HS_DUR" --warmup 1s --sources 16 "${watch[@]}"
}

tls_suite() {
  install_peers
  command -v openssl >/dev/null || { log "openssl is needed for the TLS certificates"; exit 1; }
  [ -f "$WORK/tether.toml" ] || write_configs
  local key target
  for key in "${TLS_KEYS[@]}"; do make_cert "$key"; write_tls_configs "$key"; done
  [ "$ECHO_RUNNING" = 1 ] || start_echo_backends
  for ROUND in $(seq "$ROUNDS"); do
    for target in $(tls_targets); do
      for key in "${TLS_KEYS[@]}"; do
        SERVER_PIDS=()
        tls_command "$target" "$key"
        # Access logs off, as in the plain rows.
        start_server "$target-tls" "$TLS_PORT" env TETHER_LOG=warn "${TLS_CMD[@]}"
        measure_tls "$target" "$key"
        stop_pid "$SERVER_MAIN"
      done
    done
  done
  ROUND=1
}

# fanout TARGET FLAVOUR PORTS... — the rising-rate fan-out run against two hub nodes.
fanout() {
  local target=$1 flavour=$2 hubs=() port
  shift 2
  for port in "$@"; do hubs+=(--hub "ws://127.0.0.1:$port"); done
  run_bench "$target" fanout fanout --flavour "$flavour" "${hubs[@]}" --subscribers "$SUBS" \
    --rate 2 --factor 1.5 --max-rate "$MAX_RATE" --step "$STEP" --drain 2s --p99-bound 50ms \
    --stop-above 1s
}

# instructions_suite — each proxy's user-space instructions per echoed round trip, counted by
# callgrind. Each proxy runs twice under valgrind, with pingpong load for 1 s and for 6 s;
# (instructions of the long run − the short one) ÷ (round trips of the long run − the short
# one) cancels start-up and shutdown. The kernel's share is not counted, and instructions are
# not cycles, but the count does not move with the machine's load. With TLS, the same for a
# full TLS handshake + upgrade + close per key type (tls_instructions).
instructions_suite() {
  install_peers
  install_valgrind
  [ -f "$WORK/tether.toml" ] || write_configs
  # valgrind keeps a few descriptors for itself: HAProxy refuses to start if it cannot get
  # all it asks for.
  sed "s/ulimit-n .*/ulimit-n $((FD_LIMIT - 100))/" "$WORK/haproxy.cfg" > "$WORK/haproxy-callgrind.cfg"
  # nginx's worker runs as an unprivileged user and writes its own profile.
  chmod 711 "$WORK"
  mkdir -p -m 1777 "$WORK/callgrind"
  [ "$ECHO_RUNNING" = 1 ] || start_echo_backends
  CG_LOAD=cg_pingpong CG_RUN=instructions CG_SHORT=1s CG_LONG=6s
  count_instructions haproxy "$PORT_HAPROXY" haproxy -db -f "$WORK/haproxy-callgrind.cfg"
  count_instructions nginx "$PORT_NGINX" nginx -p "$WORK/nginx" -c "$WORK/nginx.conf"
  count_instructions tether "$PORT_TETHER" "$TETHER" proxy --config "$WORK/tether.toml"
  [ "$SKIP_TLS" = 1 ] || tls_instructions
}

# tls_instructions — instructions per full TLS handshake (+ upgrade + close), per key type and
# proxy; the certificates and configurations are tls_suite's.
tls_instructions() {
  local key target dir
  for key in "${TLS_KEYS[@]}"; do
    dir=$WORK/tls-$key
    [ -f "$dir/tether.toml" ] || { make_cert "$key"; write_tls_configs "$key"; }
    sed "s/ulimit-n .*/ulimit-n $((FD_LIMIT - 100))/" "$dir/haproxy.cfg" > "$dir/haproxy-callgrind.cfg"
    chmod -R a+rX "$dir"
    CG_LOAD=cg_handshake CG_RUN=tls-hs-instructions-$key CG_SHORT=2s CG_LONG=8s CG_CA=$dir/ca.pem
    for target in $(tls_targets); do
      tls_command "$target" "$key"
      [ "$target" != haproxy ] || TLS_CMD=(haproxy -db -f "$dir/haproxy-callgrind.cfg")
      count_instructions "$target" "$TLS_PORT" "${TLS_CMD[@]}"
    done
  done
}

install_valgrind() {
  command -v valgrind >/dev/null && return
  log "installing valgrind from Debian's packages"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind
}

# count_instructions TARGET PORT COMMAND... — stores {short, long} runs of TARGET under the
# run name CG_RUN, with CG_LOAD as the load for CG_SHORT and CG_LONG.
count_instructions() {
  local target=$1 port=$2 short long
  shift 2
  log "$target: $CG_RUN (callgrind)"
  short=$(callgrind_run "$target" "$port" "$CG_SHORT" "$@")
  long=$(callgrind_run "$target" "$port" "$CG_LONG" "$@")
  printf '{"target":"%s","run":"%s","round":1,"result":{"short":%s,"long":%s}}\n' \
    "$target" "$CG_RUN" "$short" "$long" >> "$RESULTS"
}

# The loads of a callgrind run: each prints how much work was done (round trips, handshakes).
# cg_pingpong PORT DURATION — 16 connections × 64 B over ws://.
cg_pingpong() {
  json_field messages "$(taskset -c "$CLIENT_CPU" "$TETHER" bench --threads 1 pingpong \
    --url "ws://127.0.0.1:$1/ws" --connections 16 --size 64 --duration "$2" --warmup 0s \
    2>>"$WORK/bench.log")"
}
# cg_handshake PORT DURATION — 4 clients cycling full TLS handshakes against CG_CA's proxy,
# after 3 s of the same that are not counted: the first handshakes under valgrind are slow
# (aws-lc seeds its entropy pool, OpenSSL loads its providers), and a window that opened at
# once would count none of them in the short run while paying for them in both.
cg_handshake() {
  json_field handshakes "$(taskset -c "$CLIENT_CPU" "$TETHER" bench --threads 1 handshake \
    --url "wss://127.0.0.1:$1/ws" --ca "$CG_CA" --concurrency 4 --sources 4 --duration "$2" \
    --warmup 3s 2>>"$WORK/bench.log")"
}

# json_field NAME JSON — prints the number JSON holds under NAME; fails on empty input.
json_field() {
  [ -n "$2" ] || return 1
  printf '%s' "$2" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[process.argv[1]]))' "$1"
}

# callgrind_run TARGET PORT DURATION COMMAND... — prints {"instructions":N,"count":M} of one
# run under callgrind, M being what CG_LOAD counted (null when it failed).
callgrind_run() {
  local target=$1 port=$2 dur=$3 pid count out instructions name
  shift 3
  name=$target-$CG_RUN-$dur
  out=$WORK/callgrind-$name.log
  # Every process of the server (nginx: master and worker) prints its total at exit.
  TETHER_LOG=warn taskset -c "$SERVER_CPU" valgrind --tool=callgrind \
    --callgrind-out-file="$WORK/callgrind/$name.%p" "$@" > "$out" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  # Under valgrind start-up is slow: HAProxy alone takes ~20 s to load its CA store.
  local i
  for i in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  sleep 1
  count=$("$CG_LOAD" "$port" "$dur") || count=
  # Every process of it (nginx's worker too) is told to stop, and each prints its total as
  # it exits; a kill -9 would lose them, so wait for all of them to be gone.
  local pattern="callgrind-out-file=$WORK/callgrind/$name"
  pkill -TERM -f "$pattern" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for i in $(seq 300); do pgrep -f "$pattern" >/dev/null || break; sleep 0.1; done
  instructions=$(awk '/Collected :/ {s += $4} END {print s + 0}' "$out")
  if [ -z "$count" ] || [ "$count" = undefined ] || [ "$instructions" = 0 ]; then
    log "$target: callgrind run of $dur failed (see $out)"
    echo null; return
  fi
  printf '{"instructions":%s,"count":%s}\n' "$instructions" "$count"
}

hub_suite() {
  local prefix="tether-bench-$$" port i mains=()
  if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    log "no Redis on 127.0.0.1:6379; skipping the hub comparison"; return
  fi
  if [ ! -d "$ROOT/bench/socketio/node_modules" ]; then
    log "installing the Socket.IO server's packages"
    (cd "$ROOT/bench/socketio" && npm ci --no-audit --no-fund --silent)
  fi
  i=1
  for port in "${SIO_PORTS[@]}"; do
    start_server "sio$i" "$port" env PORT="$port" NAME="sio$i" REDIS_URL="$REDIS_URL" \
      KEY_PREFIX="$prefix-sio" node "$ROOT/bench/socketio/server.js"
    mains+=("$SERVER_MAIN"); i=$((i + 1))
  done
  fanout socketio socketio "${SIO_PORTS[@]}"
  for pid in "${mains[@]}"; do stop_pid "$pid"; done

  start_hubs "$prefix-hub"
  fanout tether-hub tether "${HUB_PORTS[@]}"
  for pid in "${HUB_MAINS[@]}"; do stop_pid "$pid"; done
  # Again with a write delay: what a busy deployment would set (see docs/hub.md, "Hub tuning").
  start_hubs "$prefix-hub-batched" --write-delay "$WRITE_DELAY"
  fanout tether-hub-batched tether "${HUB_PORTS[@]}"
  for pid in "${HUB_MAINS[@]}"; do stop_pid "$pid"; done
  forget_redis_keys "$prefix"
}

# start_hubs PREFIX [HUB ARGS...] — two tether hub nodes on the shared Redis; HUB_MAINS holds
# their PIDs.
start_hubs() {
  local prefix=$1 port i=1
  shift
  HUB_MAINS=()
  for port in "${HUB_PORTS[@]}"; do
    # The per-client frame rate limit guards against abusive clients; the benchmark's one
    # publisher is meant to go fast (Socket.IO has no such limit), so it is lifted here.
    start_server "hub$i" "$port" "$TETHER" hub --listen "127.0.0.1:$port" --name "hub$i" \
      --broker "$REDIS_URL/0" --redis-prefix "$prefix" \
      --client-rate 1000000 --client-burst 1000000 "$@"
    HUB_MAINS+=("$SERVER_MAIN"); i=$((i + 1))
  done
}

# Deletes the keys this run left in Redis (both servers' prefixes start with $1).
forget_redis_keys() {
  command -v redis-cli >/dev/null || return 0
  redis-cli -u "$REDIS_URL" --scan --pattern "$1*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null || true
}

# The commit measured, marked when the work tree had changes.
commit() {
  local rev
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  if ! git -C "$ROOT" diff --quiet HEAD -- crates 2>/dev/null; then rev="$rev + uncommitted changes"; fi
  echo "$rev"
}

machine() {
  local cpu
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
  printf '%s cores (%s), %s GiB RAM, Linux %s' "$(nproc)" "${cpu:-unknown CPU}" \
    "$(awk '/MemTotal/ {printf "%d", $2 / 1048576}' /proc/meminfo)" "$(uname -r)"
}

main() {
  local began=$SECONDS load_before
  build_tether
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  log "results in $WORK; servers on CPU $SERVER_CPU, generator and echo backends on CPU $CLIENT_CPU"
  [ "$SKIP_PROXIES" = 1 ] || proxy_suite
  [ "$SKIP_PROXIES" = 1 ] || [ "$SKIP_TLS" = 1 ] || tls_suite
  [ "$INSTRUCTIONS" = 0 ] || instructions_suite
  [ "$SKIP_HUB" = 1 ] || hub_suite
  mkdir -p "$ROOT/bench/results"
  local out=$ROOT/bench/results/latest.md
  [ "$QUICK" = 0 ] || out=$WORK/latest.md
  # Only a full run speaks for the project: a partial or quick one leaves the docs alone.
  local docs=()
  if [ "$DOCS" = 1 ] && [ "$QUICK" = 0 ] && [ "$SKIP_PROXIES" = 0 ] && [ "$SKIP_TLS" = 0 ] && [ "$SKIP_HUB" = 0 ]; then
    docs=("BENCH_DOC=$ROOT/docs/bench.md" "BENCH_README=$ROOT/README.md")
  fi
  env ${docs[@]+"${docs[@]}"} \
    BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" BENCH_MACHINE="$(machine)" BENCH_SECONDS=$((SECONDS - began)) \
    BENCH_IDLE_N="$IDLE_N" BENCH_WRITE_DELAY="$WRITE_DELAY" BENCH_COMMAND="bench/compare.sh ${ARGS[*]}" BENCH_COMMIT="$(commit)" \
    BENCH_LOAD="load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after (other processes on the machine add noise)" \
    node "$ROOT/bench/table.js" "$RESULTS" > "$WORK/latest.md"
  cp "$RESULTS" "${out%.md}.jsonl"
  [ "$out" = "$WORK/latest.md" ] || cp "$WORK/latest.md" "$out"
  cat "$WORK/latest.md"
  log "done in $((SECONDS - began)) s; table written to $out${docs[*]:+, docs/bench.md and README.md}"
}

main; exit $?  # one line: edits to this file during a run cannot change it
