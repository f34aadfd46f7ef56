#!/usr/bin/env bash
# Benchmark: Herald side by side with other MQTT brokers, and Herald with Kafka
# against its budgets (issue #4). One run, one machine, one report.
#
# A. Plain MQTT, same load generator (herald-loadtest) against each broker in
#    turn, each on its own loopback port, only one broker running at a time:
#      - Herald in open mode (no auth, no ACL; the Kafka bridge is connected
#        but plain topics match no uplink rule, downlink and presence are off),
#      - Mosquitto (Debian package), rumqttd 0.20 and RMQTT (rmqttd 0.24)
#        (crates.io, built here into target/peers/ when missing).
#    Fan-in:  100 publishers on bench/in/<i> -> 1 subscriber on bench/in/#,
#             QoS 0 and QoS 1 at fixed offered rates (open loop).
#    Fan-out: 1 publisher on bench/out at a fixed rate -> 100 subscribers.
#    Every broker gets the same per-client limits where the notion exists:
#    32 QoS 1 messages in flight per client, 1000 queued, TCP_NODELAY.
# B. Herald with device authentication (fleet key), Kafka, presence and the
#    downlink consumer, as deployed, plus `herald-consumers announcer`:
#      fleet (10,000 idle sessions: memory per session, connects/s),
#      storm (5,000 terminals drop and reconnect at once),
#      uplink (1,000 terminals, 5,000 scans/s QoS 1: PUBACK-after-Kafka and
#              MQTT->Kafka latency),
#      announce (1,000 speakers, 1,000 payments/s: Kafka -> announcer ->
#                Herald -> speaker latency).
# pinned (not in the default PARTS; issue #12): the four ratios of Herald
#    against its references, the broker pinned to one CPU and the load
#    generator to the other (taskset -c; PIN_BROKER, PIN_LOAD), one broker at
#    a time (defaults of the environment variables below in brackets):
#      1. memory per idle session (RSS from /proc/PID/status before the clients
#         connect and [5] s (SETTLE) after the last scheduled connect, divided by the
#         sessions connected): Herald in device mode (fleet-key passwords, Kafka)
#         against Mosquitto with a password file (one username for all clients),
#         [19,000] plain sessions without a subscription (`fleet`/`conn`) and
#         with one each on devices/<id>/down/# (`sub -q 1`), and [3,000] TLS
#         sessions (Python ssl clients, benches/pinned.py tls-clients, RSA-2048
#         self-signed certificate made by openssl for the run). Goal <= 1.0x,
#         TLS <= 0.5x. Herald gets broker.fd_reserve = 512 so that it accepts
#         19,000 sessions under a 20,000 open-file limit (default reserve 1024).
#      2. CPU per message: fan-in QoS 0 and 1 (100 publishers -> 1 subscriber,
#         256 B) at [5,000 and 20,000] msg/s, Herald in open mode and Mosquitto
#         as in part A: broker CPU-seconds over the publishing run
#         (utime+stime of /proc/PID/stat) and delivery p99, in [3] rounds (CPU_ROUNDS)
#         with the brokers' order alternating; the medians are compared.
#         Goal <= 1.0x, p99 no worse.
#      3. Kafka hop: `uplink -c 1000 -R 500 -r 5000 -d DURATION` PUBACK p50/p99/p99.9
#         (Herald in device mode with Kafka) against Kafka's Java producer
#         (deploy/kafka/kafka.sh run org.apache.kafka.tools.ProducerPerformance,
#         [100,000] 256-byte records at 5000/s, acks=all, idempotent,
#         linger.ms=2, pinned to the broker's CPU, on a topic with the partitions of
#         herald.uplink.scan; run twice, the second compared). Goals: p99 <= 1.5x,
#         p50 within 1 ms; p99.9 reported.
#      4. authenticated connects: [10,000] clients offered at [20,000]/s,
#         Herald (fleet-key passwords) against Mosquitto (password file):
#         sessions connected per broker CPU-second, and the rate achieved.
#    Reports in target/bench/compare/pinned/ (ratios.json: the headline), and the
#    headline table of docs/benchmarks.md between <!-- ratios:begin --> and
#    <!-- ratios:end --> (benches/pinned.py report). A pinned-only run leaves
#    the reports of parts A and B, and their section of the docs, alone.
#
# Writes every JSON report under target/bench/compare/, SVG latency plots into
# docs/images/ and regenerates the tables of docs/benchmarks.md between
# <!-- compare:begin --> and <!-- compare:end -->. The load generator, the
# brokers and Kafka share this machine's cores: read ratios within a run.
#
# Usage: benches/compare.sh
#        PARTS=pinned benches/compare.sh     the four ratios of issue #12 (about 20 minutes)
# Environment (all optional):
#   BASE_PORT=24880          ports BASE_PORT..BASE_PORT+15 on 127.0.0.1 must be free (keep
#                            them below the ephemeral range, where clients take ports)
#   BROKERS="herald mosquitto rumqttd rmqtt"   brokers of part A, in order
#   PARTS="a b"              which parts to run: a, b, pinned
#   DURATION=20              seconds of publishing per scenario
#   FANIN_Q0_RATES="20000 40000 60000 80000 120000 160000"  offered msg/s, fan-in QoS 0
#   FANIN_Q1_RATES="10000 20000 30000 40000 60000"          offered msg/s, fan-in QoS 1
#   FANOUT_RATES="200 1000"  msg/s published, fan-out (x100 subscribers)
#   RMQTT_BUILD_TIMEOUT=2400 seconds allowed for building rmqttd (it is large)
#   SKIP_DOCS=1              do not touch docs/ (reports only)
#   REPORT_ONLY=1            run nothing: redraw the plots and regenerate docs/benchmarks.md
#                            from the reports of the last run in target/bench/compare/
#                            (with PARTS set: only the sections of those parts; unset:
#                            every section whose run is recorded)
# Part pinned only:
#   PIN_BROKER=0 PIN_LOAD=1  CPUs of the broker and of the load generator (taskset -c)
#   PIN_JAVA=$PIN_BROKER     CPU of Kafka's Java producer (in the broker's place)
#   MEM_SESSIONS=19000       plain idle sessions per broker (the open-file limit is per process)
#   MEM_CONNRATE=2000        their connects per second
#   TLS_SESSIONS=3000        idle TLS sessions per broker
#   TLS_CONNRATE=200         their connects per second
#   SETTLE=5                 seconds after the last scheduled connect before memory is read
#   CPU_RATES="5000 20000"   fan-in rates (msg/s) of the CPU comparison, QoS 0 and 1
#   CPU_ROUNDS=3             rounds of the CPU comparison, the brokers' order alternating;
#                            the headline shows each row's median
#   CONNECTS=10000           clients of the connect-rate comparison
#   CONNECT_RATE=20000       their offered connects per second
#   PERF_RECORDS=100000      records of each Java producer run
#   PINNED_STEPS="memory tls connects cpu kafka"   the measurements to take (for trials;
#                            the headline shows the others as not measured)
# A broker's rate ladder stops at the first rate it does not sustain (less than
# 99 % delivered or a delivery p99 over 100 ms): higher rates are not run for it.
# Peers that cannot be built or started here are reported as such, in the
# output and in docs/benchmarks.md, and the run goes on without them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

COMMAND_LINE="benches/compare.sh${*:+ $*}"
for var in BASE_PORT BROKERS PARTS DURATION FANIN_Q0_RATES FANIN_Q1_RATES FANOUT_RATES \
  PIN_BROKER PIN_LOAD PIN_JAVA MEM_SESSIONS MEM_CONNRATE TLS_SESSIONS TLS_CONNRATE SETTLE CPU_RATES \
  CPU_ROUNDS CONNECTS CONNECT_RATE PERF_RECORDS PINNED_STEPS; do
  [[ -n ${!var:-} ]] && COMMAND_LINE="$var=\"${!var}\" $COMMAND_LINE"
done

BASE_PORT=${BASE_PORT:-24880}
BROKERS=${BROKERS:-herald mosquitto rumqttd rmqtt}
PARTS_GIVEN=${PARTS:+yes}
PARTS=${PARTS:-a b}
DURATION=${DURATION:-20}
FANIN_Q0_RATES=${FANIN_Q0_RATES:-20000 40000 60000 80000 120000 160000}
FANIN_Q1_RATES=${FANIN_Q1_RATES:-10000 20000 30000 40000 60000}
FANOUT_RATES=${FANOUT_RATES:-200 1000}
RMQTT_BUILD_TIMEOUT=${RMQTT_BUILD_TIMEOUT:-2400}
SKIP_DOCS=${SKIP_DOCS:-}
REPORT_ONLY=${REPORT_ONLY:-}
PIN_BROKER=${PIN_BROKER:-0}
PIN_LOAD=${PIN_LOAD:-1}
PIN_JAVA=${PIN_JAVA:-$PIN_BROKER}
MEM_SESSIONS=${MEM_SESSIONS:-19000}
MEM_CONNRATE=${MEM_CONNRATE:-2000}
TLS_SESSIONS=${TLS_SESSIONS:-3000}
TLS_CONNRATE=${TLS_CONNRATE:-200}
SETTLE=${SETTLE:-5}
CPU_RATES=${CPU_RATES:-5000 20000}
CPU_ROUNDS=${CPU_ROUNDS:-3}
CONNECTS=${CONNECTS:-10000}
CONNECT_RATE=${CONNECT_RATE:-20000}
PERF_RECORDS=${PERF_RECORDS:-100000}
PINNED_STEPS=${PINNED_STEPS:-memory tls connects cpu kafka}
for part in $PARTS; do
  [[ $part == a || $part == b || $part == pinned ]] ||
    { echo "compare.sh: unknown part $part (a, b, pinned)" >&2; exit 1; }
done
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

OUT=target/bench/compare
PINNED=$OUT/pinned # part pinned's reports
DIR=$OUT           # where start_broker and scenario write (the current part's directory)
PEERS=target/peers
IMAGES=docs/images
LT=target/release/herald-loadtest # a copy in $OUT/bin/ once built (below)
HERALD_BIN=target/release/herald
KAFKA=127.0.0.1:9092
FLEET_KEY=$(printf 'herald-benchmark-fleet-key-0000' | base64)

PORT_HERALD_OPEN=$BASE_PORT
PORT_MOSQUITTO=$((BASE_PORT + 1))
PORT_RUMQTTD=$((BASE_PORT + 2))
PORT_RMQTT=$((BASE_PORT + 3))
PORT_HERALD=$((BASE_PORT + 4))
PORT_HERALD_TLS=$((BASE_PORT + 5))
PORT_MOSQUITTO_TLS=$((BASE_PORT + 6))
PORT_MOSQUITTO_AUTH=$((BASE_PORT + 7))
PORT_HERALD_OPEN_HTTP=$((BASE_PORT + 10))
PORT_RMQTT_RPC=$((BASE_PORT + 13))
PORT_HERALD_HTTP=$((BASE_PORT + 14))
PORT_ANNOUNCER_HTTP=$((BASE_PORT + 15))

say() { echo "compare.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

BROKER_PIN=() LOAD_PIN=() # taskset prefixes of brokers and load generators (part pinned)

# --- processes: everything started here is stopped on exit ---------------------------------

STARTED=() # pids of background processes started by this script
KAFKA_STARTED_HERE=no

stop_pid() { # PID: SIGTERM, wait up to 10 s, then SIGKILL
  local pid=$1
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
  if [[ $KAFKA_STARTED_HERE == yes ]]; then
    say "stopping the Kafka this run started"
    deploy/kafka/kafka.sh stop >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

spawn() { # LOGFILE CMD...: start CMD in the background, remember its pid in $SPAWNED
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  SPAWNED=$!
  STARTED+=("$SPAWNED")
}

forget() { # PID: stop it and drop it from STARTED
  local pid=$1 kept=() p
  stop_pid "$pid"
  for p in "${STARTED[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  STARTED=("${kept[@]}")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Any TCP socket on this local port, listening or not (a client's ephemeral port
# too), except TIME_WAIT leftovers, which do not stop a listener from binding.
port_taken() {
  awk -v p=":$(printf '%04X' "$1")" 'FNR > 1 && substr($2, length($2) - 4) == p && $4 != "06" { f = 1 }
    END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

wait_port() { # PORT PID SECONDS: until something listens on PORT (fails if PID dies)
  local port=$1 pid=$2 i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$port" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# CPU accounting: ticks of a process, and busy/total ticks of the machine.
HZ=$(getconf CLK_TCK)
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }

CPU_PID='' CPU_T0='' CPU_P0='' CPU_M0=''
cpu_begin() { # PID
  CPU_PID=$1
  CPU_T0=$(date +%s.%N)
  CPU_P0=$(proc_ticks "$1")
  CPU_M0=$(machine_ticks)
}
cpu_end() { # META_FILE BROKER CASE: writes broker and machine CPU use over the window
  local t1 p1 m1
  t1=$(date +%s.%N)
  p1=$(proc_ticks "$CPU_PID")
  m1=$(machine_ticks)
  python3 - "$1" "$2" "$3" "$CPU_T0" "$t1" "$CPU_P0" "$p1" "$CPU_M0" "$m1" "$HZ" <<'PY'
import json, sys
out, broker, case, t0, t1, p0, p1, m0, m1, hz = sys.argv[1:]
wall = float(t1) - float(t0)
p0, p1 = int(p0 or 0), int(p1 or p0 or 0)  # the process may be gone
(mt0, mi0), (mt1, mi1) = (map(int, m0.split()), map(int, m1.split()))
total = max(mt1 - mt0, 1)
json.dump({
    "broker": broker, "case": case, "wall_secs": round(wall, 2),
    # broker CPU in cores (1.0 = one core busy all the time)
    "broker_cpu_cores": round((p1 - p0) / int(hz) / max(wall, 1e-9), 2),
    "broker_cpu_secs": round((p1 - p0) / int(hz), 2),
    # the whole machine, all processes: 1.0 = every core busy
    "machine_busy": round(1 - (mi1 - mi0) / total, 3),
}, open(out, "w"), indent=1)
PY
}

if [[ -z $REPORT_ONLY ]]; then # up to the plots: build, run, record the run

# --- dependencies and builds ----------------------------------------------------------------

command -v cargo >/dev/null || die "cargo is needed (Rust toolchain)"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if ! command -v python3 >/dev/null || [[ ! -x $MOSQUITTO ]]; then
  scripts/install-deps.sh # Debian packages, mosquitto among them
fi
[[ -x $MOSQUITTO ]] || die "mosquitto is not installed"
if has_part pinned; then
  for tool in taskset openssl mosquitto_passwd; do
    command -v "$tool" >/dev/null || die "part pinned needs $tool"
  done
  for cpu in "$PIN_BROKER" "$PIN_LOAD" "$PIN_JAVA"; do
    taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu (set PIN_BROKER, PIN_LOAD, PIN_JAVA)"
  done
  ((PIN_BROKER != PIN_LOAD)) || say "warning: broker and load generator pinned to the same CPU $PIN_BROKER"
fi

mkdir -p "$OUT" "$PEERS/logs"
if has_part a || has_part b; then # a pinned-only run keeps the reports of parts A and B
  rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.conf "$OUT"/*.toml "$OUT"/*.txt
  rm -rf "$OUT/plot"
fi
if has_part pinned; then
  rm -rf "$PINNED"
  mkdir -p "$PINNED"
fi
declare -A PEER_STATUS=()

say "building Herald, herald-loadtest and herald-consumers (release)"
cargo build --release --locked -q -p herald -p herald-loadtest -p herald-consumers
# The run uses a copy of these binaries, so that a rebuild in this tree while it
# runs (cargo replaces target/release/*) cannot mix two builds in one report.
HERALD_VERSION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':!benches' ':!docs' 2>/dev/null || HERALD_VERSION+='+uncommitted changes'
mkdir -p "$OUT/bin"
cp -f target/release/herald target/release/herald-loadtest target/release/herald-consumers "$OUT/bin/"
HERALD_BIN=$OUT/bin/herald LT=$OUT/bin/herald-loadtest

registry_src() { # CRATE-VERSION: its unpacked source in cargo's registry, if any
  local d
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$1"; do
    [[ -d $d ]] && { echo "$d"; return 0; }
  done
  return 1
}

build_rumqttd() {
  [[ -x $PEERS/bin/rumqttd ]] && return 0
  say "building rumqttd 0.20.0 (log: $PEERS/logs/rumqttd-build.log)"
  if cargo install rumqttd --version 0.20.0 --locked --root "$PEERS" --target-dir "$PEERS/build" \
    >"$PEERS/logs/rumqttd-build.log" 2>&1; then
    return 0
  fi
  # rumqttd 0.20.0's lock file pins metrics 0.22.1, which current rustc rejects
  # (E0521, rust-lang/rust#141402); 0.22.4 fixes it. Build a copy of the crate
  # with only that dependency moved, everything else as locked.
  say "cargo install --locked failed (see the log); retrying with metrics 0.22.4 in the lock file"
  local src copy
  src=$(registry_src rumqttd-0.20.0) || return 1
  copy=$PEERS/src/rumqttd-0.20.0
  rm -rf "$copy"
  mkdir -p "$PEERS/src"
  cp -r "$src" "$copy"
  printf '\n[workspace]\n' >>"$copy/Cargo.toml" # not a member of Herald's workspace
  {
    cargo update -q --manifest-path "$copy/Cargo.toml" -p metrics --precise 0.22.4 &&
      cargo build --release --locked --manifest-path "$copy/Cargo.toml" --target-dir "$PEERS/build" &&
      mkdir -p "$PEERS/bin" && cp "$PEERS/build/release/rumqttd" "$PEERS/bin/rumqttd"
  } >>"$PEERS/logs/rumqttd-build.log" 2>&1
}

build_rmqttd() {
  [[ -x $PEERS/bin/rmqttd ]] && return 0
  # rmqttd builds its gRPC protocol with protoc.
  if ! command -v protoc >/dev/null; then
    say "installing protobuf-compiler (protoc) for rmqttd's build"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 ||
      { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq protobuf-compiler; } >/dev/null 2>&1 ||
      return 1
  fi
  say "building rmqttd 0.24.0, allowing ${RMQTT_BUILD_TIMEOUT}s (log: $PEERS/logs/rmqttd-build.log)"
  timeout "$RMQTT_BUILD_TIMEOUT" cargo install rmqttd --version 0.24.0 --locked --root "$PEERS" \
    --target-dir "$PEERS/build" >"$PEERS/logs/rmqttd-build.log" 2>&1
}

has_part a || BROKERS=
for broker in $BROKERS; do
  case $broker in
  herald | mosquitto) ;;
  rumqttd)
    build_rumqttd || PEER_STATUS[rumqttd]="could not be built here (log: $PEERS/logs/rumqttd-build.log)"
    ;;
  rmqtt)
    build_rmqttd || PEER_STATUS[rmqtt]="could not be built here within ${RMQTT_BUILD_TIMEOUT}s (log: $PEERS/logs/rmqttd-build.log)"
    ;;
  *) die "unknown broker $broker (herald, mosquitto, rumqttd, rmqtt)" ;;
  esac
  [[ -n ${PEER_STATUS[$broker]:-} ]] && say "SKIPPING $broker: ${PEER_STATUS[$broker]}"
done

# --- ports and Kafka ---------------------------------------------------------------------------

for port in "$PORT_HERALD_OPEN" "$PORT_MOSQUITTO" "$PORT_RUMQTTD" "$PORT_RMQTT" "$PORT_HERALD" \
  "$PORT_HERALD_OPEN_HTTP" "$PORT_RMQTT_RPC" "$PORT_HERALD_HTTP" "$PORT_ANNOUNCER_HTTP" \
  "$PORT_HERALD_TLS" "$PORT_MOSQUITTO_TLS" "$PORT_MOSQUITTO_AUTH"; do
  port_taken "$port" && die "port $port on 127.0.0.1 is in use: stop what uses it or set BASE_PORT"
done
read -r EPHEMERAL_LOW EPHEMERAL_HIGH </proc/sys/net/ipv4/ip_local_port_range
((BASE_PORT + 15 < EPHEMERAL_LOW || BASE_PORT > EPHEMERAL_HIGH)) ||
  say "warning: ports $BASE_PORT-$((BASE_PORT + 15)) are in the ephemeral range $EPHEMERAL_LOW-$EPHEMERAL_HIGH: a client connection may take one of them"

if ! deploy/kafka/kafka.sh status >/dev/null 2>&1; then
  KAFKA_STARTED_HERE=yes
fi
deploy/kafka/kafka.sh start >/dev/null

# --- part A: plain MQTT against each broker ----------------------------------------------------

BROKER_PID='' BROKER_PORT=''
# Settings both Mosquitto configurations share: per-client limits as Herald's defaults.
MOSQUITTO_COMMON="persistence false
max_inflight_messages 32
max_queued_messages 1000
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning"

start_broker() { # NAME: start it on its own port (pinned with BROKER_PIN); fails (and says why) if it does not serve
  # Writes its config and log into $DIR.
  local name=$1 dir=$DIR/$1
  mkdir -p "$dir"
  case $name in
  herald)
    BROKER_PORT=$PORT_HERALD_OPEN
    cat >"$DIR/herald-open.toml" <<TOML
# Herald as a plain MQTT broker: no authentication, no ACL. The Kafka bridge
# connects, but bench/ topics match no uplink rule, so nothing goes to Kafka.
[broker]
listen = "127.0.0.1:$PORT_HERALD_OPEN"
[broker.auth]
mode = "open"
# Benchmarks measure capacity: the listener's connect-rate limit (5000/s by
# default, docs/reliability.md) is off here.
[broker.admission]
max_connect_rate = 0
[kafka]
bootstrap_servers = "$KAFKA"
[kafka.downlink]
enabled = false
[kafka.presence]
enabled = false
[http]
listen = "127.0.0.1:$PORT_HERALD_OPEN_HTTP"
[log]
filter = "warn"
TOML
    spawn "$DIR/herald-open.log" "${BROKER_PIN[@]}" "$HERALD_BIN" --config "$DIR/herald-open.toml" run
    ;;
  mosquitto)
    BROKER_PORT=$PORT_MOSQUITTO
    cat >"$DIR/mosquitto.conf" <<CONF
# Mosquitto as a plain broker on its own port; per-client limits as Herald's defaults.
listener $PORT_MOSQUITTO 127.0.0.1
allow_anonymous true
$MOSQUITTO_COMMON
CONF
    spawn "$DIR/mosquitto.log" "${BROKER_PIN[@]}" "$MOSQUITTO" -c "$DIR/mosquitto.conf"
    ;;
  rumqttd)
    BROKER_PORT=$PORT_RUMQTTD
    cat >"$DIR/rumqttd.toml" <<TOML
# rumqttd with one MQTT 3.1.1 server on its own port; no console, no metrics.
id = 0

[router]
id = 0
max_connections = 20000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT_RUMQTTD"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 32
    dynamic_filters = true
TOML
    spawn "$DIR/rumqttd.log" "${BROKER_PIN[@]}" "$PEERS/bin/rumqttd" --quiet --config "$DIR/rumqttd.toml"
    ;;
  rmqtt)
    BROKER_PORT=$PORT_RMQTT
    mkdir -p "$dir/plugins"
    cat >"$DIR/rmqtt.toml" <<TOML
# RMQTT as a plain broker on its own port: no ACL and no HTTP API plugin,
# no "busy" refusals (this machine is loaded by design), gRPC on loopback.
[node]
id = 1
[node.busy]
check_enable = false
[rpc]
server_addr = "127.0.0.1:$PORT_RMQTT_RPC"
[log]
to = "console"
level = "warn"
[plugins]
dir = "$ROOT/$dir/plugins"
disabled_default_startups = ["rmqtt-acl", "rmqtt-http-api"]
[listener.tcp.external]
addr = "127.0.0.1:$PORT_RMQTT"
allow_anonymous = true
nodelay = true
max_connections = 100000
max_handshaking_limit = 5000
max_inflight = 32
max_mqueue_len = 1000
TOML
    # rmqttd also reads ./rmqtt.toml: run it where there is none.
    spawn "$DIR/rmqtt.log" "${BROKER_PIN[@]}" bash -c "cd '$dir' && exec '$ROOT/$PEERS/bin/rmqttd' -f '$ROOT/$DIR/rmqtt.toml'"
    ;;
  herald-device)
    # Herald as deployed: device authentication with a fleet key, uplinks to
    # Kafka, downlink consumer and presence events on (the defaults). Part
    # pinned adds lines to [broker] (HERALD_BROKER_EXTRA) and a TLS listener
    # (HERALD_TLS_TABLE).
    BROKER_PORT=$PORT_HERALD
    cat >"$DIR/herald-device.toml" <<TOML
# Herald as deployed: device authentication with a fleet key, uplinks to Kafka,
# downlink consumer and presence events on (the defaults).
[broker]
listen = "127.0.0.1:$PORT_HERALD"
${HERALD_BROKER_EXTRA:-}
[broker.auth]
fleet_key = "$FLEET_KEY"
# Benchmarks measure capacity: the listener's connect-rate limit (5000/s by
# default, docs/reliability.md) is off here.
[broker.admission]
max_connect_rate = 0
${HERALD_TLS_TABLE:-}
[kafka]
bootstrap_servers = "$KAFKA"
[http]
listen = "127.0.0.1:$PORT_HERALD_HTTP"
[log]
filter = "warn"
TOML
    spawn "$DIR/herald-device.log" "${BROKER_PIN[@]}" "$HERALD_BIN" --config "$DIR/herald-device.toml" run
    ;;
  mosquitto-auth)
    # Mosquitto with password-file authentication ($DIR/mosquitto.passwd) on a
    # plain and a TLS listener ($DIR/tls/); per-client limits as in part A.
    BROKER_PORT=$PORT_MOSQUITTO_AUTH
    cat >"$DIR/mosquitto-auth.conf" <<CONF
per_listener_settings false
allow_anonymous false
password_file $ROOT/$DIR/mosquitto.passwd
$MOSQUITTO_COMMON
listener $PORT_MOSQUITTO_AUTH 127.0.0.1
listener $PORT_MOSQUITTO_TLS 127.0.0.1
certfile $ROOT/$DIR/tls/cert.pem
keyfile $ROOT/$DIR/tls/key.pem
CONF
    spawn "$DIR/mosquitto-auth.log" "${BROKER_PIN[@]}" "$MOSQUITTO" -c "$DIR/mosquitto-auth.conf"
    ;;
  esac
  BROKER_PID=$SPAWNED
  if ! wait_port "$BROKER_PORT" "$BROKER_PID" 30; then
    say "$name did not start (log: $OUT/$name.log):"
    tail -5 "$DIR/$name.log" >&2 || true
    forget "$BROKER_PID"
    return 1
  fi
  sleep 2 # let it settle (Herald's Kafka client connects)
}

metrics() { # FILE: the device-mode Herald's Prometheus metrics now
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://127.0.0.1:$PORT_HERALD_HTTP/metrics" >"$1" 2>/dev/null || true
}
# run_device CASE ARGS...: one herald-loadtest scenario against the device-mode Herald
# ($BROKER_PID, started with `start_broker herald-device`): report, log, Herald's CPU over
# the run and its metrics before and after in $DIR/$DEVICE_PREFIX$CASE.*
DEVICE_PREFIX=''
run_device() {
  local case=$1 base=$DIR/$DEVICE_PREFIX$1
  shift
  say "herald+kafka: $case"
  metrics "$base.metrics-before.txt"
  cpu_begin "$BROKER_PID"
  "${LOAD_PIN[@]}" "$LT" "$@" -p "$PORT_HERALD" --fleet-key "$FLEET_KEY" --report "$base.json" \
    >"$base.log" 2>&1 || say "herald+kafka: $case failed (log: $base.log)"
  cpu_end "$base.meta.json" herald "$case"
  metrics "$base.metrics-after.txt"
  sleep 2
}

# One scenario: subscribers first, then publishers; both reports (in $DIR), and CPU over the window.
# scenario BROKER CASE QOS RATE SUB_CLIENTS SUB_FILTER PUB_CLIENTS PUB_TOPIC
scenario() {
  local broker=$1 case=$2 qos=$3 rate=$4 subs=$5 filter=$6 pubs=$7 topic=$8
  local base=$DIR/$broker-$case sub_pid
  say "$broker: $case (QoS $qos, $rate msg/s offered, $pubs publishers -> $subs subscribers)"
  spawn "$base-sub.log" "${LOAD_PIN[@]}" "$LT" sub -p "$BROKER_PORT" -c "$subs" -R 1000 --client-id 'sub-%i' \
    -t "$filter" -q "$qos" -d $((DURATION + 5)) --report "$base-sub.json"
  sub_pid=$SPAWNED
  sleep 2
  cpu_begin "$BROKER_PID"
  "${LOAD_PIN[@]}" "$LT" pub -p "$BROKER_PORT" -c "$pubs" -R 1000 --client-id 'pub-%i' -t "$topic" -q "$qos" \
    -r "$rate" -d "$DURATION" --report "$base-pub.json" >"$base-pub.log" 2>&1 ||
    say "$broker: $case: publisher failed (log: $base-pub.log)"
  cpu_end "$base.meta.json" "$broker" "$case"
  wait "$sub_pid" || say "$broker: $case: subscriber failed (log: $base-sub.log)"
  forget "$sub_pid"
  sleep 1
}

# sustained SUB_REPORT EXPECTED: at least 99 % delivered and a delivery p99 of at most 100 ms.
sustained() {
  python3 - "$1" "$2" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(1)
p99 = r.get("latency_us", {}).get("e2e", {}).get("p99", 10**12)
sys.exit(0 if r["received"] >= 0.99 * int(sys.argv[2]) and p99 <= 100_000 else 1)
PY
}

if has_part a; then
  for broker in $BROKERS; do
    [[ -n ${PEER_STATUS[$broker]:-} ]] && continue
    if ! start_broker "$broker"; then
      PEER_STATUS[$broker]="built but did not start here (log: $OUT/$broker.log)"
      say "SKIPPING $broker: ${PEER_STATUS[$broker]}"
      continue
    fi
    for qos in 0 1; do
      rates=$FANIN_Q0_RATES
      ((qos == 0)) || rates=$FANIN_Q1_RATES
      for rate in $rates; do
        scenario "$broker" "fanin-q$qos-$rate" "$qos" "$rate" 1 'bench/in/#' 100 'bench/in/%i'
        sustained "$OUT/$broker-fanin-q$qos-$rate-sub.json" $((rate * DURATION)) || {
          say "$broker: fan-in QoS $qos not sustained at $rate msg/s: no higher rate for it"
          break
        }
      done
    done
    for qos in 0 1; do
      for rate in $FANOUT_RATES; do
        scenario "$broker" "fanout-q$qos-$rate" "$qos" "$rate" 100 bench/out 1 bench/out
        sustained "$OUT/$broker-fanout-q$qos-$rate-sub.json" $((rate * DURATION * 100)) || {
          say "$broker: fan-out QoS $qos not sustained at $rate msg/s: no higher rate for it"
          break
        }
      done
    done
    forget "$BROKER_PID"
    PEER_STATUS[$broker]=ran
  done
fi

# --- part B: Herald with device auth and Kafka ---------------------------------------------------

if has_part b; then
  cat >"$OUT/announcer.toml" <<TOML
# The announcer with its default topics: herald.payments -> herald.downlink.
http_listen = "127.0.0.1:$PORT_ANNOUNCER_HTTP"
[kafka]
bootstrap_servers = "$KAFKA"
TOML
  start_broker herald-device || die "Herald did not start (log: $OUT/herald-device.log)"
  HERALD_PID=$BROKER_PID
  RUST_LOG=warn HERALD_CONSUMERS_HTTP_LISTEN=127.0.0.1:$PORT_ANNOUNCER_HTTP \
    spawn "$OUT/announcer.log" "$OUT/bin/herald-consumers" announcer --config "$OUT/announcer.toml"
  ANNOUNCER_PID=$SPAWNED
  wait_port "$PORT_ANNOUNCER_HTTP" "$ANNOUNCER_PID" 30 || die "announcer did not start (log: $OUT/announcer.log)"
  sleep 3 # Herald's and the announcer's consumer groups get their partitions

  DEVICE_PREFIX=b-
  # Memory first, on a Herald that has carried no traffic yet.
  run_device fleet fleet -c 10000 -R 10000 --client-id 'fleet-%i' --hold 15 --broker-pid "$HERALD_PID"
  run_device storm storm -c 5000 -R 5000 --client-id 'storm-%i' --hold 5
  run_device uplink uplink -c 1000 -R 500 --client-id 'scanbox-%i' -r 5000 -d "$DURATION" --kafka "$KAFKA"
  run_device announce announce -c 1000 -R 500 --client-id 'speaker-%i' -r 1000 -d "$DURATION" --kafka "$KAFKA"
  forget "$ANNOUNCER_PID"
  forget "$HERALD_PID"
fi

# --- part pinned: the four ratios of issue #12 -----------------------------------------------------

if has_part pinned; then
  PINNED_START=$SECONDS
  DIR=$PINNED
  DEVICE_PREFIX=''
  BROKER_PIN=(taskset -c "$PIN_BROKER")
  LOAD_PIN=(taskset -c "$PIN_LOAD")
  HOLD=$((SETTLE + 5)) # idle fleets stay connected this long after their last scheduled connect
  # The connect-rate fleets are read later: connects refused for a full listen
  # backlog come back after SYN retransmits (1, 2, 4 s), and idle sessions cost
  # no CPU meanwhile.
  CONNECT_READ=$((SETTLE + 10))

  # Credentials and certificate of this run. Mosquitto, started as root, drops
  # to its own user before it reads them: they are readable by all (a
  # throwaway key for loopback).
  MOSQ_USER=bench
  MOSQ_PASSWORD=bench-$RANDOM$RANDOM
  mosquitto_passwd -b -c "$DIR/mosquitto.passwd" "$MOSQ_USER" "$MOSQ_PASSWORD" >"$DIR/mosquitto_passwd.log" 2>&1 ||
    die "mosquitto_passwd failed (log: $DIR/mosquitto_passwd.log)"
  mkdir -p "$DIR/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$DIR/tls/key.pem" -out "$DIR/tls/cert.pem" >"$DIR/tls/openssl.log" 2>&1 ||
    die "openssl could not make the certificate (log: $DIR/tls/openssl.log)"
  chmod 644 "$DIR/mosquitto.passwd" "$DIR/tls/key.pem"
  # Herald keeps broker.fd_reserve descriptors (default 1024) out of max_connections:
  # with 512, MEM_SESSIONS (19,000) sessions fit under a 20,000 open-file limit.
  HERALD_BROKER_EXTRA='fd_reserve = 512'
  HERALD_TLS_TABLE="[broker.tls]
listen = \"127.0.0.1:$PORT_HERALD_TLS\"
cert_path = \"$ROOT/$DIR/tls/cert.pem\"
key_path = \"$ROOT/$DIR/tls/key.pem\""

  rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
  # Each idle fleet connects from its own two loopback source addresses, so that
  # the TIME_WAIT sockets of the one before cannot take its ports.
  SOURCE_NET=0 SOURCES=''
  next_sources() {
    SOURCE_NET=$((SOURCE_NET + 1))
    SOURCES=127.0.$SOURCE_NET.2,127.0.$SOURCE_NET.3
  }
  # idle_fleet CASE CLIENTS RATE AFTER CMD...: runs CMD, a fleet that connects
  # CLIENTS at RATE per second and holds them idle (for longer than AFTER s), on
  # the load generator's CPU; reads the broker's RSS and CPU time before it
  # starts and AFTER s after its last scheduled connect, into
  # $DIR/CASE.meta.json, with the broker's idle CPU use over the 3 s before
  # (Herald's Kafka clients poll: cpu_secs_net leaves that out), and its CPU time
  # every 0.1 s in $DIR/CASE.cpu.txt. For Herald also its metrics at the second
  # reading ($DIR/CASE.metrics.txt). CMD writes $DIR/CASE.json.
  idle_fleet() {
    local case=$1 clients=$2 rate=$3 after=$4 wait_s pid sampler rss0 rss1 p0 p1 t0 t1 pi ti
    shift 4
    wait_s=$(python3 -c "import sys; print(int(sys.argv[1]) / float(sys.argv[2]) + float(sys.argv[3]))" \
      "$clients" "$rate" "$after")
    say "pinned: $case ($clients sessions at $rate/s)"
    spawn "$DIR/$case.cpu-sampler.log" "${LOAD_PIN[@]}" python3 benches/pinned.py cpu-sampler \
      --pid "$BROKER_PID" --out "$DIR/$case.cpu.txt"
    sampler=$SPAWNED
    pi=$(proc_ticks "$BROKER_PID") ti=$(date +%s.%N)
    sleep 3
    rss0=$(rss_kib "$BROKER_PID") p0=$(proc_ticks "$BROKER_PID") t0=$(date +%s.%N)
    spawn "$DIR/$case.log" "${LOAD_PIN[@]}" "$@"
    pid=$SPAWNED
    sleep "$wait_s"
    rss1=$(rss_kib "$BROKER_PID") p1=$(proc_ticks "$BROKER_PID") t1=$(date +%s.%N)
    [[ $BROKER_PORT != "$PORT_HERALD" ]] || metrics "$DIR/$case.metrics.txt"
    wait "$pid" || say "pinned: $case: the load generator failed (log: $DIR/$case.log)"
    forget "$pid"
    forget "$sampler"
    python3 - "$DIR/$case.meta.json" "$case" "$after" "$rss0" "$rss1" "$pi" "$p0" "$p1" "$ti" "$t0" "$t1" \
      "$HZ" <<'PY'
import json, sys
out, case, after, rss0, rss1, pi, p0, p1, ti, t0, t1, hz = sys.argv[1:]
hz, wall = int(hz), float(t1) - float(t0)
idle = (int(p0 or 0) - int(pi or 0)) / hz / max(float(t0) - float(ti), 1e-9)  # CPU-s per s
cpu = (int(p1 or 0) - int(p0 or 0)) / hz
json.dump({"case": case, "read_after_secs": float(after), "start_unix": float(t0), "hz": hz,
           "rss_before_kib": int(rss0 or 0), "rss_after_kib": int(rss1 or 0),
           "cpu_secs": round(cpu, 2), "wall_secs": round(wall, 2),
           "idle_cpu_per_sec": round(idle, 4), "cpu_secs_net": round(max(cpu - idle * wall, 0), 2)},
          open(out, "w"), indent=1)
PY
    sleep 1
  }
  # start_pinned herald|mosquitto: a fresh broker for one measurement, Herald in
  # device mode or Mosquitto with its password file, settled; sets AUTH (the
  # clients' credentials), VERB (the idle-fleet scenario) and TLS_PORT.
  start_pinned() {
    if [[ $1 == herald ]]; then
      start_broker herald-device || die "Herald did not start (log: $DIR/herald-device.log)"
      sleep 3 # its Kafka producer and consumer group settle
      AUTH=(--fleet-key "$FLEET_KEY") VERB=fleet TLS_PORT=$PORT_HERALD_TLS
    else
      start_broker mosquitto-auth || die "Mosquitto did not start (log: $DIR/mosquitto-auth.log)"
      AUTH=(-u "$MOSQ_USER" -P "$MOSQ_PASSWORD") VERB=conn TLS_PORT=$PORT_MOSQUITTO_TLS
    fi
  }

  step() { [[ " $PINNED_STEPS " == *" $1 "* ]]; }
  for s in memory tls connects cpu kafka; do
    step "$s" || say "pinned: $s not measured (PINNED_STEPS=\"$PINNED_STEPS\")"
  done

  # 1. Memory per idle session: plain (without and with a subscription), then TLS.
  for variant in plain sub; do
    step memory || break
    for kind in herald mosquitto; do
      name=mem-$kind
      [[ $variant == plain ]] || name=mem-sub-$kind
      start_pinned "$kind"
      next_sources
      if [[ $variant == plain ]]; then
        idle_fleet "$name" "$MEM_SESSIONS" "$MEM_CONNRATE" "$SETTLE" \
          "$LT" "$VERB" -p "$BROKER_PORT" --ifaddr "$SOURCES" -c "$MEM_SESSIONS" -R "$MEM_CONNRATE" --client-id 'dev-%i' --hold "$HOLD" --broker-pid "$BROKER_PID" \
          "${AUTH[@]}" --report "$DIR/$name.json"
      else
        idle_fleet "$name" "$MEM_SESSIONS" "$MEM_CONNRATE" "$SETTLE" \
          "$LT" sub -p "$BROKER_PORT" --ifaddr "$SOURCES" -c "$MEM_SESSIONS" -R "$MEM_CONNRATE" --client-id 'dev-%i' -t 'devices/%c/down/#' -q 1 -d "$HOLD" \
          "${AUTH[@]}" --report "$DIR/$name.json"
      fi
      forget "$BROKER_PID"
    done
  done
  for kind in herald mosquitto; do
    step tls || break
    start_pinned "$kind"
    idle_fleet "tls-$kind" "$TLS_SESSIONS" "$TLS_CONNRATE" "$SETTLE" \
      python3 benches/pinned.py tls-clients --port "$TLS_PORT" --ca "$DIR/tls/cert.pem" -c "$TLS_SESSIONS" -R "$TLS_CONNRATE" --hold "$HOLD" --client-id 'tls-%i' \
      "${AUTH[@]}" --report "$DIR/tls-$kind.json"
    forget "$BROKER_PID"
  done

  # 4. Authenticated connects on one core (before the publishing runs heat anything up).
  for kind in herald mosquitto; do
    step connects || break
    start_pinned "$kind"
    next_sources
    idle_fleet "connect-$kind" "$CONNECTS" "$CONNECT_RATE" "$CONNECT_READ" "$LT" "$VERB" -p "$BROKER_PORT" \
      --ifaddr "$SOURCES" -c "$CONNECTS" -R "$CONNECT_RATE" --client-id 'conn-%i' --hold $((CONNECT_READ + 5)) \
      "${AUTH[@]}" --report "$DIR/connect-$kind.json"
    forget "$BROKER_PID"
  done

  # 2. CPU per message: plain fan-in, Herald in open mode and Mosquitto as in part A.
  # CPU_ROUNDS rounds, the brokers' order alternating, so that a machine that gets
  # busier or quieter during the step weighs on both (the headline takes medians).
  for round in $(seq "$CPU_ROUNDS"); do
    order="herald mosquitto"
    ((round % 2 == 0)) && order="mosquitto herald"
    for kind in $order; do
      step cpu || break 2
      start_broker "$kind" || die "$kind did not start (log: $DIR/$kind.log)"
      # Its CPU use while idle (5 s), which the runs' CPU-seconds include.
      p0=$(proc_ticks "$BROKER_PID")
      sleep 5
      p1=$(proc_ticks "$BROKER_PID")
      printf '{"broker": "%s", "idle_cpu_per_sec": %s}\n' "$kind" \
        "$(python3 -c 'import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3]) / 5, 4))' \
          "$p0" "$p1" "$HZ")" >"$DIR/$kind-idle-r$round.json"
      for qos in 0 1; do
        for rate in $CPU_RATES; do
          scenario "$kind" "fanin-q$qos-$rate-r$round" "$qos" "$rate" 1 'bench/in/#' 100 'bench/in/%i'
        done
      done
      forget "$BROKER_PID"
    done
  done

  # 3. The Kafka hop: Herald's PUBACK after Kafka, then Kafka's own Java producer
  # at the same rate and settings, on a topic with as many partitions as Herald's.
  if step kafka; then
    start_pinned herald
    run_device uplink uplink -c 1000 -R 500 --client-id 'scanbox-%i' -r 5000 -d "$DURATION" --kafka "$KAFKA"
    forget "$BROKER_PID"
    PERF_TOPIC=herald-bench-pinned-perf
    partitions=$(deploy/kafka/kafka.sh topics --describe --topic herald.uplink.scan 2>/dev/null |
      sed -n 's/.*PartitionCount:[[:space:]]*\([0-9][0-9]*\).*/\1/p' | head -1) || true
    deploy/kafka/kafka.sh topics --create --if-not-exists --topic "$PERF_TOPIC" --partitions "${partitions:-3}" \
      --replication-factor 1 >"$DIR/perf-topic.log" 2>&1 ||
      say "pinned: could not create $PERF_TOPIC (log: $DIR/perf-topic.log)"
    for n in 1 2; do
      say "pinned: Kafka's Java producer, run $n of 2 ($PERF_RECORDS records at 5000/s on CPU $PIN_JAVA)"
      timeout $((PERF_RECORDS / 5000 + 120)) taskset -c "$PIN_JAVA" deploy/kafka/kafka.sh run \
        org.apache.kafka.tools.ProducerPerformance --topic "$PERF_TOPIC" --num-records "$PERF_RECORDS" \
        --throughput 5000 --record-size 256 --producer-props "bootstrap.servers=$KAFKA" acks=all \
        enable.idempotence=true linger.ms=2 >"$DIR/perf-$n.log" 2>&1 ||
        say "pinned: the Java producer failed (log: $DIR/perf-$n.log)"
    done
    deploy/kafka/kafka.sh topics --delete --topic "$PERF_TOPIC" >>"$DIR/perf-topic.log" 2>&1 || true
  fi
  DIR=$OUT BROKER_PIN=() LOAD_PIN=()
fi

# --- run description, plots, tables --------------------------------------------------------------

versions() {
  local v
  # As built (above). Uncommitted changes count only outside benches/ and docs/ (this script and its output).
  echo "herald=$HERALD_VERSION"
  echo "mosquitto=$("$MOSQUITTO" -h 2>&1 | sed -n 's/^mosquitto version //p' | head -1)"
  v=unknown
  [[ -x $PEERS/bin/rumqttd ]] && v=0.20.0
  echo "rumqttd=$v"
  v=unknown
  [[ -x $PEERS/bin/rmqttd ]] && v=$("$PEERS/bin/rmqttd" -V 2>/dev/null | sed -n 's|^rmqtt/\([0-9.]*\).*|\1|p' | head -1)
  echo "rmqtt=${v:-unknown}"
  echo "rustc=$(rustc --version 2>/dev/null | awk '{print $2}')"
}
machine() {
  echo "date=$(date -u +%Y-%m-%d)"
  echo "nproc=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "mem_kib=$(awk '/^MemTotal/{print $2}' /proc/meminfo)"
  # shellcheck source=/dev/null
  echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "kernel=$(uname -r)"
  echo "nofile=$(ulimit -n)"
  echo "command=$COMMAND_LINE"
  echo "duration=$DURATION"
}
if has_part a || has_part b; then
  {
    for k in "${!PEER_STATUS[@]}"; do echo "status.$k=${PEER_STATUS[$k]}"; done
    versions
    machine
    echo "fanin_q0=$FANIN_Q0_RATES"
    echo "fanin_q1=$FANIN_Q1_RATES"
    echo "fanout=$FANOUT_RATES"
    echo "brokers=$BROKERS"
    echo "parts=$PARTS"
    echo "elapsed=$SECONDS"
  } >"$OUT/run.txt"
fi
if has_part pinned; then
  {
    versions
    machine
    echo "kafka=$(deploy/kafka/kafka.sh env 2>/dev/null | sed -n 's/^KAFKA_VERSION=//p')"
    echo "java=$(java -version 2>&1 | head -1 | sed 's/"//g')"
    echo "pin_broker=$PIN_BROKER"
    echo "pin_load=$PIN_LOAD"
    echo "pin_java=$PIN_JAVA"
    echo "settle=$SETTLE"
    echo "mem_sessions=$MEM_SESSIONS"
    echo "tls_sessions=$TLS_SESSIONS"
    echo "cpu_rates=$CPU_RATES"
    echo "cpu_rounds=$CPU_ROUNDS"
    echo "connects=$CONNECTS"
    echo "connect_rate=$CONNECT_RATE"
    echo "perf_records=$PERF_RECORDS"
    echo "elapsed=$((SECONDS - PINNED_START))"
  } >"$PINNED/run.txt"
fi

fi # REPORT_ONLY

# Which sections to regenerate: those of the parts run, or (REPORT_ONLY without
# PARTS) every one whose run is recorded.
DO_COMPARE='' DO_PINNED=''
if [[ -n $REPORT_ONLY && -z $PARTS_GIVEN ]]; then
  [[ -f $OUT/run.txt ]] && DO_COMPARE=yes
  [[ -f $PINNED/run.txt ]] && DO_PINNED=yes
  [[ -n $DO_COMPARE$DO_PINNED ]] || die "no run recorded in $OUT/run.txt or $PINNED/run.txt"
else
  if has_part a || has_part b; then
    [[ -f $OUT/run.txt ]] || die "no run recorded in $OUT/run.txt"
    DO_COMPARE=yes
  fi
  if has_part pinned; then
    [[ -f $PINNED/run.txt ]] || die "no pinned run recorded in $PINNED/run.txt"
    DO_PINNED=yes
  fi
fi

if [[ -n $DO_COMPARE ]]; then

# Plot inputs: one report per curve, named as the legend should read, holding
# only the series that matter (the plot draws every series of a report), in
# $OUT/plot/NAME/, with the title in $OUT/plot/NAME.title. Fan-in is drawn at
# the highest rate Mosquitto sustained (the reference), fan-out at the first rate.
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
run = dict(line.rstrip("\n").split("=", 1) for line in open(f"{out}/run.txt") if "=" in line)
duration, q0, q1, fanout = float(run["duration"]), run["fanin_q0"], run["fanin_q1"], run["fanout"]
names = {"herald": "Herald", "mosquitto": "Mosquitto", "rumqttd": "rumqttd", "rmqtt": "RMQTT"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def put(plot, title, label, report, series):
    r = dict(report)
    r["distributions"] = {s: d for s, d in report["distributions"].items() if s in series}
    if not r["distributions"]:
        return
    os.makedirs(f"{out}/plot/{plot}", exist_ok=True)
    with open(f"{out}/plot/{plot}/{label}.json", "w") as f:
        json.dump(r, f)
    with open(f"{out}/plot/{plot}.title", "w") as f:
        f.write(title)


def sustained(report, expected):
    p99 = report.get("latency_us", {}).get("e2e", {}).get("p99", 10**12)
    return report["received"] >= 0.99 * expected and p99 <= 100_000


for qos, rates in ((0, q0.split()), (1, q1.split())):
    if not rates:
        continue
    ok = [r for r in rates if (m := load(f"{out}/mosquitto-fanin-q{qos}-{r}-sub.json"))
          and sustained(m, float(r) * duration)]
    rate = ok[-1] if ok else rates[0]
    title = f"Fan-in QoS {qos}, 100 -> 1 client, {int(rate):,} msg/s"
    for b, name in names.items():
        sub, pub = load(f"{out}/{b}-fanin-q{qos}-{rate}-sub.json"), load(f"{out}/{b}-fanin-q{qos}-{rate}-pub.json")
        if sub:
            put(f"fan-in-qos{qos}", title, f"{name} delivery", sub, {"e2e"})
        if pub and qos == 1:
            put(f"fan-in-qos{qos}", title, f"{name} PUBACK", pub, {"ack"})
for qos in (0, 1):
    rate = fanout.split()[0] if fanout.split() else None
    if not rate:
        break
    title = f"Fan-out QoS {qos}, 1 -> 100 clients, {int(rate):,} msg/s"
    for b, name in names.items():
        sub = load(f"{out}/{b}-fanout-q{qos}-{rate}-sub.json")
        if sub:
            put(f"fan-out-qos{qos}", title, f"{name} delivery", sub, {"e2e"})
r = load(f"{out}/b-uplink.json")
if r:
    title = "Herald uplink with Kafka, 5,000 msg/s QoS 1"
    put("uplink", title, "PUBACK after Kafka", r, {"ack"})
    put("uplink", title, "MQTT to Kafka", r, {"e2e"})
r = load(f"{out}/b-announce.json")
if r:
    put("announce", "Herald announce, 1,000 payments/s",
        "payment to speaker", r, {"e2e"})
title = "Herald connects: 10,000 at 10,000/s; storm of 5,000"
for case, label, series in (("fleet", "fleet", {"connect"}), ("storm", "storm", {"reconnect"})):
    r = load(f"{out}/b-{case}.json")
    if r:
        put("connects", title, label, r, series)
PY

if [[ -z $SKIP_DOCS ]]; then
  mkdir -p "$IMAGES"
  DATE=$(sed -n 's/^date=//p' "$OUT/run.txt")
  # Only the plots this script draws are replaced.
  rm -f "$IMAGES"/fan-in-qos*.svg "$IMAGES"/fan-out-qos*.svg "$IMAGES"/uplink.svg \
    "$IMAGES"/announce.svg "$IMAGES"/connects.svg
  for dir in "$OUT"/plot/*/; do
    [[ -d $dir ]] || continue
    name=$(basename "$dir")
    "$LT" plot "$dir"*.json -o "$IMAGES/$name.svg" \
      --title "$(cat "$OUT/plot/$name.title") ($DATE, $(nproc) vCPU, benches/compare.sh)" \
      2>/dev/null || say "plot $name failed"
  done

  python3 - "$OUT" docs/benchmarks.md "$IMAGES" <<'PY'
# Regenerates the section of docs/benchmarks.md between the compare markers
# from the JSON reports of this run.
import json, os, re, sys

out, doc, images = sys.argv[1:4]
run = {}
for line in open(f"{out}/run.txt"):
    if "=" in line:
        k, v = line.rstrip("\n").split("=", 1)
        run[k] = v
BROKERS = [("herald", "Herald"), ("mosquitto", "Mosquitto"), ("rumqttd", "rumqttd"), ("rmqtt", "RMQTT")]
SUSTAIN_DELIVERED, SUSTAIN_P99_US = 0.99, 100_000


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ms(us):
    if us is None:
        return "–"
    v = us / 1000
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms" if v < 100 else f"{v:,.0f} ms"


def lat(report, series, key):
    p = (report or {}).get("latency_us", {}).get(series)
    return p[key] if p else None


def num(x):
    return f"{x:,.0f}"


def pct(x):
    return f"{100 * x:.1f} %" if x < 0.999 or x > 1.0005 else f"{100 * x:.2f} %"


lines = []
w = lines.append
mem_gib = int(run.get("mem_kib", "0")) / 1024 / 1024
w("<!-- Generated by benches/compare.sh from its JSON reports (target/bench/compare/): "
  "re-run the script rather than editing this section. -->")
w("")
w(f"**Command:** `{run.get('command')}` ({int(run.get('elapsed', '0')) // 60} minutes; publishing "
  f"phases of {run.get('duration')} s). **Date:** {run.get('date')}. **Machine:** {run.get('nproc')} vCPU "
  f"({run.get('cpu')}), {mem_gib:.1f} GiB, {run.get('os')}, Linux {run.get('kernel')}, "
  f"open-file limit {run.get('nofile')}; rustc {run.get('rustc')}, release builds. "
  f"**Versions:** Herald {run.get('herald')}, Mosquitto {run.get('mosquitto')}, "
  f"rumqttd {run.get('rumqttd')}, RMQTT {run.get('rmqtt')}.")
w("")
w("Load generator (`herald-loadtest`), broker and Kafka share the machine's cores: "
  "*broker CPU* is the broker's CPU time over the publishing window in cores, *machine busy* "
  "the share of all cores busy (load generator, broker, Kafka and anything else on this shared "
  "machine). Latencies count from each message's scheduled send time (open loop), so a broker "
  "or load generator that falls behind shows it in every later message.")
w("")
skipped = [(name, run[f"status.{b}"]) for b, name in BROKERS
           if f"status.{b}" in run and run[f"status.{b}"] != "ran" and b in run.get("brokers", "")]
for name, why in skipped:
    w(f"- **{name} is not in this run:** {why}.")
if skipped:
    w("")

# ---- fan-in -----------------------------------------------------------------------------
dur = float(run.get("duration", "20"))
fanin = {}  # (qos, rate) -> broker -> row
for qos, key in ((0, "fanin_q0"), (1, "fanin_q1")):
    for rate in run.get(key, "").split():
        for b, name in BROKERS:
            sub = load(f"{out}/{b}-fanin-q{qos}-{rate}-sub.json")
            pub = load(f"{out}/{b}-fanin-q{qos}-{rate}-pub.json")
            meta = load(f"{out}/{b}-fanin-q{qos}-{rate}.meta.json") or {}
            if not sub or not pub:
                continue
            offered = float(rate) * dur
            fanin.setdefault((qos, int(rate)), {})[b] = dict(
                name=name, sub=sub, pub=pub, meta=meta,
                recv_rate=sub["received"] / dur, delivered=sub["received"] / max(offered, 1),
                p99=lat(sub, "e2e", "p99"))

w("### Plain MQTT fan-in: 100 publishers → 1 subscriber")
w("")
w(f"100 clients publish 256-byte messages on `bench/in/<i>` for {run.get('duration')} s at a fixed "
  "total rate; one client subscribed to `bench/in/#` with the same QoS receives them all. "
  "*Delivered* = messages received ÷ messages offered (rate × duration). With QoS 1 both legs are "
  "QoS 1 and *PUBACK* is the publishers' acknowledgement latency.")
w("")
w("| QoS | offered msg/s | broker | published msg/s | received msg/s | delivered | delivery p50 | p99 | max | PUBACK p50 / p99 | broker CPU | machine busy |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|")
for (qos, rate), rows in sorted(fanin.items()):
    for b, _ in BROKERS:
        r = rows.get(b)
        if not r:
            continue
        puback = (f"{ms(lat(r['pub'], 'ack', 'p50'))} / {ms(lat(r['pub'], 'ack', 'p99'))}"
                  if qos else "–")
        w(f"| {qos} | {num(rate)} | {r['name']} | {num(r['pub']['achieved_publish_rate'])} | "
          f"{num(r['recv_rate'])} | {pct(r['delivered'])} | {ms(lat(r['sub'], 'e2e', 'p50'))} | "
          f"{ms(r['p99'])} | {ms(lat(r['sub'], 'e2e', 'max'))} | {puback} | "
          f"{r['meta'].get('broker_cpu_cores', '–')} | "
          f"{pct(r['meta']['machine_busy']) if 'machine_busy' in r['meta'] else '–'} |")
w("")


def sustained(r):
    return r["delivered"] >= SUSTAIN_DELIVERED and (r["p99"] or 0) <= SUSTAIN_P99_US


w(f"**Highest offered rate sustained** (≥ {SUSTAIN_DELIVERED:.0%} delivered and delivery p99 "
  f"≤ {SUSTAIN_P99_US // 1000} ms), among the rates tried:")
w("")
w("| QoS | rates tried (msg/s) | " + " | ".join(name for b, name in BROKERS) + " |")
w("|---|---|" + "---|" * len(BROKERS))
best = {}
for qos in (0, 1):
    rates = sorted(r for q, r in fanin if q == qos)
    if not rates:
        continue
    cells = []
    for b, name in BROKERS:
        ok = [rate for rate in rates if b in fanin[(qos, rate)] and sustained(fanin[(qos, rate)][b])]
        ran = any(b in fanin[(qos, rate)] for rate in rates)
        best[(qos, b)] = max(ok) if ok else 0
        if not ran:
            cells.append("–")
        elif not ok:
            cells.append(f"< {num(rates[0])}")
        else:
            cells.append((f"≥ {num(max(ok))}" if max(ok) == rates[-1] else num(max(ok))))
    w(f"| {qos} | {', '.join(num(r) for r in rates)} | " + " | ".join(cells) + " |")
w("")

w("**Herald ÷ Mosquitto at the same offered load** (received msg/s and delivery p99):")
w("")
w("| QoS | offered msg/s | Herald received | Mosquitto received | ratio | Herald p99 | Mosquitto p99 | p99 ratio |")
w("|---|---|---|---|---|---|---|---|")
for (qos, rate), rows in sorted(fanin.items()):
    h, m = rows.get("herald"), rows.get("mosquitto")
    if not h or not m:
        continue
    ratio = h["recv_rate"] / max(m["recv_rate"], 1e-9)
    p99r = (h["p99"] or 0) / max(m["p99"] or 1, 1)
    w(f"| {qos} | {num(rate)} | {num(h['recv_rate'])} | {num(m['recv_rate'])} | {ratio:.2f}× | "
      f"{ms(h['p99'])} | {ms(m['p99'])} | {p99r:.2f}× |")
w("")

# ---- fan-out ------------------------------------------------------------------------------
fo_rates = run.get("fanout", "200").split()
w(f"### Plain MQTT fan-out: 1 publisher → 100 subscribers")
w("")
w(f"One client publishes 256-byte messages on `bench/out` at a fixed rate "
  f"({', '.join(fo_rates)} msg/s) for {run.get('duration')} s; 100 clients subscribed to "
  "`bench/out` with the same QoS each receive every message, so 100 deliveries per message.")
w("")
w("| QoS | published msg/s | broker | deliveries/s | delivered | delivery p50 | p99 | max | broker CPU | machine busy |")
w("|---|---|---|---|---|---|---|---|---|---|")
for qos in (0, 1):
    for rate in fo_rates:
        for b, name in BROKERS:
            sub = load(f"{out}/{b}-fanout-q{qos}-{rate}-sub.json")
            pub = load(f"{out}/{b}-fanout-q{qos}-{rate}-pub.json")
            meta = load(f"{out}/{b}-fanout-q{qos}-{rate}.meta.json") or {}
            if not sub or not pub:
                continue
            expected = float(rate) * dur * 100
            w(f"| {qos} | {num(pub['achieved_publish_rate'])} | {name} | {num(sub['received'] / dur)} | "
              f"{pct(sub['received'] / expected)} | {ms(lat(sub, 'e2e', 'p50'))} | {ms(lat(sub, 'e2e', 'p99'))} | "
              f"{ms(lat(sub, 'e2e', 'max'))} | {meta.get('broker_cpu_cores', '–')} | "
              f"{pct(meta['machine_busy']) if 'machine_busy' in meta else '–'} |")
w("")

# ---- part B -------------------------------------------------------------------------------
fleet, storm = load(f"{out}/b-fleet.json"), load(f"{out}/b-storm.json")
uplink, announce = load(f"{out}/b-uplink.json"), load(f"{out}/b-announce.json")
bmeta = {c: load(f"{out}/b-{c}.meta.json") or {} for c in ("fleet", "storm", "uplink", "announce")}
budgets = []
if any((fleet, storm, uplink, announce)):
    w("### Herald with Kafka: device authentication, uplinks, announcements")
    w("")
    w("Herald with device authentication (fleet-key credentials, HMAC-SHA256 on every CONNECT), "
      "presence events and the downlink consumer on, as deployed; `herald-consumers announcer` with "
      "its default topics; the local single-node Kafka. Each terminal signs its own password.")
    w("")
    w("| scenario | herald-loadtest command | result | latency p50 / p99 / p99.9 / max | Herald CPU | machine busy |")
    w("|---|---|---|---|---|---|")

    def row(name, cmd, report, result, series, meta):
        lats = " / ".join(ms(lat(report, series, k)) for k in ("p50", "p99", "p999", "max"))
        w(f"| {name} | `{cmd}` | {result} | {series}: {lats} | {meta.get('broker_cpu_cores', '–')} | "
          f"{pct(meta['machine_busy']) if 'machine_busy' in meta else '–'} |")

    if fleet:
        per = fleet.get("broker_rss_per_connection_bytes")
        rss = (f"; Herald RSS {fleet['broker_rss_before_kib'] / 1024:.1f} → "
               f"{fleet['broker_rss_after_kib'] / 1024:.1f} MiB, **{num(per)} B per idle session**"
               if per else "")
        row("fleet", "fleet -c 10000 -R 10000 --hold 15 --broker-pid PID", fleet,
            f"{num(fleet['connected'])} connected, {fleet['connect_failed']} failed at "
            f"{num(fleet['connect_rate'])}/s offered{rss}", "connect", bmeta["fleet"])
    if storm:
        row("storm", "storm -c 5000 -R 5000 --hold 5", storm,
            f"{num(storm['connected'] - storm['clients'])} of {num(storm['clients'])} dropped "
            f"terminals back in {storm['duration_secs']:.2f} s, {storm['connect_failed']} failed",
            "reconnect", bmeta["storm"])
    if uplink:
        row("uplink", f"uplink -c 1000 -r 5000 -d {run.get('duration')}", uplink,
            f"{num(uplink['achieved_publish_rate'])} msg/s published, {num(uplink['acked'])} of "
            f"{num(uplink['published'])} PUBACKed, {num(uplink['received'])} read back from Kafka",
            "ack", bmeta["uplink"])
        row("uplink (Kafka side)", "(same run)", uplink, "MQTT publish (scheduled) → record read back from Kafka",
            "e2e", bmeta["uplink"])
    if announce:
        row("announce", f"announce -c 1000 -r 1000 -d {run.get('duration')}", announce,
            f"{num(announce['published'])} payments produced, {num(announce['received'])} announcements "
            "heard", "e2e", bmeta["announce"])
    w("")

    # Where the uplink time goes: Herald's own histogram of Kafka produce
    # acknowledgements (herald_kafka_produce_duration_seconds) over the run.
    def buckets(path):
        found = {}
        try:
            for line in open(path):
                m = re.match(r'herald_kafka_produce_duration_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
                if m:
                    found[m.group(1)] = float(m.group(2))
        except OSError:
            pass
        return found
    before, after = buckets(f"{out}/b-uplink.metrics-before.txt"), buckets(f"{out}/b-uplink.metrics-after.txt")
    if after:
        total = after.get("+Inf", 0) - before.get("+Inf", 0)
        if total > 0:
            shares = []
            for le in ("0.002", "0.005", "0.01", "0.02", "0.05", "0.1"):
                if le in after:
                    shares.append(f"≤ {float(le) * 1000:g} ms: {100 * (after[le] - before.get(le, 0)) / total:.2f} %")
            w(f"Kafka's acknowledgement of Herald's uplink records during the uplink run "
              f"(Herald's `herald_kafka_produce_duration_seconds`, {num(total)} records): "
              + ", ".join(shares) + ". The PUBACK waits for it.")
            w("")

    # Budgets from issue #4.
    if fleet and fleet.get("broker_rss_per_connection_bytes"):
        per = fleet["broker_rss_per_connection_bytes"]
        budgets.append(("≤ 4 KiB userland memory per idle session", f"{per / 1024:.2f} KiB", per <= 4096))
    if fleet:
        p99 = lat(fleet, "connect", "p99") or 0
        ok = fleet["connected"] == fleet["clients"] and fleet["connect_failed"] == 0 and p99 <= 100_000
        budgets.append(("10k authenticated connects/s",
                        f"{num(fleet['connected'])}/{num(fleet['clients'])} at {num(fleet['connect_rate'])}/s "
                        f"offered, connect p99 {ms(p99)}", ok))
    if uplink:
        p99 = lat(uplink, "ack", "p99")
        ok = p99 is not None and p99 <= 10_000 and uplink["acked"] >= 0.99 * uplink["published"]
        budgets.append(("uplink PUBACK-after-Kafka p99 ≤ 10 ms at 5k msg/s",
                        f"p99 {ms(p99)} at {num(uplink['achieved_publish_rate'])} msg/s", ok))
    if announce:
        p99 = lat(announce, "e2e", "p99")
        ok = (p99 is not None and p99 <= 20_000
              and announce["received"] >= 0.99 * announce["published"])
        budgets.append(("announce end-to-end p99 ≤ 20 ms at 1k payments/s",
                        f"p99 {ms(p99)}, {num(announce['received'])} of {num(announce['published'])} heard", ok))
for qos in (0, 1):
    if (qos, "herald") in best and (qos, "mosquitto") in best:
        h, m = best[(qos, "herald")], best[(qos, "mosquitto")]
        same = fanin.get((qos, m), {}) if m else {}
        hp, mp = (same.get("herald") or {}).get("p99"), (same.get("mosquitto") or {}).get("p99")
        ok = m > 0 and h >= 1.5 * m and hp is not None and mp is not None and hp <= mp
        top = max(r for q, r in fanin if q == qos)
        detail = (f"sustained: Herald {num(h)} msg/s, Mosquitto {num(m)} msg/s"
                  + (f" (both at the top rate tried: the ratio is not measured)" if h == m == top else "")
                  + (f"; at {num(m)} msg/s p99 Herald {ms(hp)}, Mosquitto {ms(mp)}" if m else ""))
        budgets.append((f"plain MQTT fan-in QoS {qos} ≥ 1.5× Mosquitto's msg/s at no worse p99", detail,
                        None if h == m == top else ok))
if budgets:
    w("### Budgets (issue #4)")
    w("")
    w("| budget | this run | verdict |")
    w("|---|---|---|")
    for what, measured, ok in budgets:
        verdict = "not decided" if ok is None else "**met**" if ok else "**missed**"
        w(f"| {what} | {measured} | {verdict} |")
    w("")

plots = [f for f in ("fan-in-qos0", "fan-in-qos1", "fan-out-qos0", "fan-out-qos1", "uplink",
                     "announce", "connects") if os.path.exists(f"{images}/{f}.svg")]
if plots:
    w("Latency distributions of this run (x: percentile on a scale of nines, y: latency, log "
      "scale; fan-in at the highest rate Mosquitto sustained, fan-out at the first rate):")
    w("")
    for f in plots:
        title = open(f"{out}/plot/{f}.title").read() if os.path.exists(f"{out}/plot/{f}.title") else f
        w(f"![{title}](images/{f}.svg)")
        w("")

section = "\n".join(lines)
text = open(doc).read()
begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    text = f"{head}{begin}\n{section}\n{end}{tail}"
else:
    text = text.rstrip("\n") + f"\n\n## Side by side and with Kafka\n\n{begin}\n{section}\n{end}\n"
open(doc, "w").write(text)
print(f"updated {doc}", file=sys.stderr)
PY
fi
fi # DO_COMPARE

if [[ -n $DO_PINNED ]]; then
  python3 benches/pinned.py report "$PINNED" docs/benchmarks.md ${SKIP_DOCS:+--no-docs}
  python3 - "$PINNED/ratios.json" <<'PY' >&2
import json, sys
for g in json.load(open(sys.argv[1]))["goals"]:
    print(f"compare.sh: {g['goal']}: Herald {g['herald']}, reference {g['reference']}, ratio {g['ratio']} "
          f"(target {g['target']}): {g['verdict'].replace('**', '')}")
PY
fi
say "done: reports in $OUT/"
