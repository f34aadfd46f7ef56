#!/usr/bin/env bash
# Fault injection: nothing Herald acknowledges is lost, measured.
#
# Runs each scenario under load with herald-loadtest's reconnecting,
# retransmitting terminals, injects the fault, lets the fleet recover, and
# prints what the load tool counted: sent, acknowledged, read back from Kafka,
# acknowledged-but-lost (must be 0), duplicates, never acknowledged; for
# downlinks produced, delivered, receipted, lost (must be 0), duplicated.
# The scenarios (docs/reliability.md#fault-injection):
#   kafka-down        Kafka killed (SIGKILL) for 60 s under uplink load, then restarted
#   kafka-restart     Kafka stopped and started again at once
#   kill-uplink       Herald killed (SIGKILL) mid-uplink, then restarted
#   kill-downlink     Herald killed (SIGKILL) mid-downlink, then restarted
#   sigterm           Herald stopped with SIGTERM (a deploy) mid-uplink and mid-downlink;
#                     the draining node's connection curve goes to target/faults/drain.csv
#   storm             as many terminals as the open-file limit allows (18,000) lose Herald
#                     (SIGKILL) and reconnect at once
#   slow-device       downlinks to terminals that stop reading, and to slow ones
#   fanin-overload    plain MQTT fan-in at full speed: 100 QoS 1 publishers, 1 subscriber
#                     (then the same against Mosquitto, for reference: not gated on)
#
# It starts its own Kafka (port 19392, target/faults/kafka) so that killing it
# touches nothing else, and its own Herald (127.0.0.1:21885, HTTP :29095).
#
# Usage: benches/faults.sh [--short] [SCENARIO...]   (default: all, in the order above)
#   --short   seconds per scenario and small fleets: the variant scripts/test.sh runs
#             (debug binaries; about 4 minutes)
# Exit status 1 if any scenario lost an acknowledged message (or could not run).
# Reports: target/faults/<scenario>*.json (herald-loadtest --report), summary.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SHORT=0
SCENARIOS=()
for arg in "$@"; do
  case $arg in
    --short) SHORT=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) SCENARIOS+=("$arg") ;;
  esac
done
((${#SCENARIOS[@]})) ||
  SCENARIOS=(kafka-down kafka-restart kill-uplink kill-downlink sigterm storm slow-device fanin-overload)

OUT=target/faults
mkdir -p "$OUT"
export KAFKA_PORT=19392 KAFKA_DIR=$PWD/$OUT/kafka
KAFKA=127.0.0.1:$KAFKA_PORT
PORT=21885
HTTP=29095
FLEET_KEY=$(printf 'herald-fault-suite-fleet-key-000' | base64)

if ((SHORT)); then
  PROFILE=debug
  cargo build --locked -q -p herald -p herald-loadtest
else
  PROFILE=release
  cargo build --release --locked -q -p herald -p herald-loadtest
fi
HERALD_BIN=target/$PROFILE/herald
LOADTEST=target/$PROFILE/herald-loadtest

# Scenario sizes: (full, short).
pick() { if ((SHORT)); then echo "$2"; else echo "$1"; fi; }
TERMINALS=$(pick 200 40)           # uplink and downlink fleets
UPLINK_RATE=$(pick 1000 200)       # scans per second across the fleet
DOWNLINK_RATE=$(pick 200 50)       # commands per second
RUN=$(pick 60 14)                  # seconds of load per scenario
FAULT_AT=$(pick 10 4)              # seconds into the load
KAFKA_DOWN=$(pick 60 5)            # seconds Kafka stays dead
SETTLE=$(pick 30 15)               # seconds the tool keeps reading Kafka after the load
STORM=$(pick 18000 1000)           # terminals in the reconnect storm
DRAIN=$(pick 10s 2s)               # broker.drain_period

log() { printf '%s faults: %s\n' "$(date +%T)" "$*" >&2; }

kafka() { deploy/kafka/kafka.sh "$@"; }

write_config() { # MODE (device|open)
  cat >"$OUT/herald.toml" <<TOML
[broker]
listen = "127.0.0.1:$PORT"
drain_period = "$DRAIN"
# The sigterm scenario's 2 x TERMINALS connections spread over the whole drain_period
# (at the default 1000/s, 400 connections would drain in 0.4 s: too fast to plot).
drain_rate = $((2 * TERMINALS / ${DRAIN%s}))
# Small queues and a short stall timeout, so that the slow-device scenario fills a
# stalled terminal's queue (refusals) and disconnects it within its seconds.
max_queued_messages = 100
slow_subscriber_timeout = "$(pick 10s 3s)"
[broker.auth]
mode = "$1"
fleet_key = "$FLEET_KEY"
[broker.admission]
# A restarted node sees its whole fleet at once; the default rate limit
# (5000/s) stays on, so the storm also exercises admission control.
flapping_max_connects = 0
[kafka]
bootstrap_servers = "$KAFKA"
[kafka.consumer_options]
# A killed node's downlink partitions move to its successor within 6 s
# (the broker's minimum) instead of librdkafka's default 45 s.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[http]
listen = "127.0.0.1:$HTTP"
[log]
filter = "warn,herald_broker::server=info"
TOML
}

HERALD_PID=
start_herald() {
  "$HERALD_BIN" --config "$OUT/herald.toml" run >>"$OUT/herald.log" 2>&1 &
  HERALD_PID=$!
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    kill -0 "$HERALD_PID" 2>/dev/null || { log "Herald exited; see $OUT/herald.log"; return 1; }
    sleep 0.1
  done
  log "Herald did not listen on $PORT"
  return 1
}
stop_herald() { # SIGNAL
  [[ -n $HERALD_PID ]] || return 0
  kill "-$1" "$HERALD_PID" 2>/dev/null || true
  wait "$HERALD_PID" 2>/dev/null || true
  HERALD_PID=
}
cleanup() {
  stop_herald KILL
  jobs -p | xargs -r kill 2>/dev/null || true
  kafka stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# One Prometheus sample from Herald (sum over labels), or empty.
metric() {
  python3 - "$HTTP" "$1" <<'PY' 2>/dev/null || true
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
values = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
          if l.startswith(name) and (l[len(name)] in " {")]
print(int(sum(values)))
PY
}

# Samples herald_connections every 100 ms into FILE until Herald exits.
sample_connections() { # FILE
  local start
  start=$(date +%s.%N)
  echo "seconds,connections" >"$1"
  while kill -0 "$HERALD_PID" 2>/dev/null; do
    local n
    n=$(metric herald_connections)
    [[ -n $n ]] && echo "$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $start}"),$n" >>"$1"
    sleep 0.1
  done
}

common_args=(-p "$PORT" --fleet-key "$FLEET_KEY" --kafka "$KAFKA" --settle "$SETTLE")

# Starts herald-loadtest SUBCOMMAND in the background, its report named NAME.
load() { # SUBCOMMAND NAME [args...]
  local command=$1 name=$2
  shift 2
  "$LOADTEST" "$command" "${common_args[@]}" --client-id "fault-$name-%i" \
    --report "$OUT/$name.json" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err" &
  LOAD_PIDS+=($!)
}
uplink_load() { load uplink "$1" -c "$TERMINALS" -R 500 -r "$UPLINK_RATE" -d "$RUN"; }
downlink_load() { load downlink "$1" -c "$TERMINALS" -R 500 -r "$DOWNLINK_RATE" -d "$RUN"; }
wait_load() {
  local pid
  for pid in "${LOAD_PIDS[@]}"; do wait "$pid" || true; done
  LOAD_PIDS=()
}
at() { sleep "$1"; } # seconds into the load (the fleet connects within 1 s at -R 500)

scenario_kafka-down() {
  uplink_load kafka-down
  at "$FAULT_AT"
  log "Kafka killed for ${KAFKA_DOWN}s"
  kafka kill >/dev/null
  sleep "$KAFKA_DOWN"
  kafka start >/dev/null
  log "Kafka back"
  wait_load
}

scenario_kafka-restart() {
  uplink_load kafka-restart
  at "$FAULT_AT"
  log "Kafka restarting"
  kafka restart >/dev/null
  log "Kafka back"
  wait_load
}

scenario_kill-uplink() {
  uplink_load kill-uplink
  at "$FAULT_AT"
  log "Herald killed (SIGKILL), restarting"
  stop_herald KILL
  start_herald
  wait_load
}

scenario_kill-downlink() {
  downlink_load kill-downlink
  at "$FAULT_AT"
  log "Herald killed (SIGKILL), restarting"
  stop_herald KILL
  start_herald
  wait_load
}

scenario_sigterm() {
  uplink_load sigterm-uplink
  downlink_load sigterm-downlink
  at "$FAULT_AT"
  log "Herald stopped with SIGTERM (drain_period $DRAIN)"
  sample_connections "$OUT/drain.csv" &
  local sampler=$!
  kill -TERM "$HERALD_PID"
  wait "$HERALD_PID" 2>/dev/null || true
  HERALD_PID=
  wait "$sampler" 2>/dev/null || true
  start_herald
  wait_load
}

scenario_storm() {
  # Connected within STORM/2000 s, then the node dies under them.
  local connecting=$((STORM / 2000))
  load uplink storm -c "$STORM" -R 2000 -r "$(pick 1000 100)" -d "$((RUN + connecting))"
  at "$((FAULT_AT + connecting))"
  log "Herald killed under $STORM terminals, restarting"
  stop_herald KILL
  start_herald
  wait_load
}

scenario_slow-device() {
  # 20 commands/s per terminal: a stalled terminal's 32 in flight and 100 queued
  # fill within seconds. Its commands end as refused or expired receipts
  # (--ttl below --settle), never as lost ones.
  local terminals=$(pick 20 10)
  load downlink slow-device -c "$terminals" -R 500 -r "$((terminals * 20))" -d "$RUN" \
    --ttl "$(pick 10 5)" --stalled 2 --slow 2 --slow-ack-ms 200
  wait_load
}

scenario_fanin-overload() {
  stop_herald TERM
  write_config open
  start_herald
  "$LOADTEST" fanin -p "$PORT" -c 100 -d "$(pick 20 8)" --settle 10 \
    --client-id "fault-fanin-%i" --report "$OUT/fanin-overload.json" \
    >"$OUT/fanin-overload.txt" 2>"$OUT/fanin-overload.err" || true
  stop_herald TERM
  write_config device
  start_herald
  # The same load against Mosquitto, for reference (reported, not gated on).
  if command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]]; then
    "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -p "$((PORT + 1))" >"$OUT/mosquitto.log" 2>&1 &
    local mosquitto=$!
    sleep 0.5
    "$LOADTEST" fanin -p "$((PORT + 1))" -c 100 -d "$(pick 20 8)" --settle 10 \
      --client-id "fault-fanin-%i" --report "$OUT/fanin-overload-mosquitto.json" \
      >"$OUT/fanin-overload-mosquitto.txt" 2>"$OUT/fanin-overload-mosquitto.err" || true
    kill "$mosquitto" 2>/dev/null || true
    wait "$mosquitto" 2>/dev/null || true
  fi
}

log "Kafka on $KAFKA ($KAFKA_DIR)"
kafka start >/dev/null
: >"$OUT/herald.log"
write_config device
start_herald
LOAD_PIDS=()
for scenario in "${SCENARIOS[@]}"; do
  declare -F "scenario_$scenario" >/dev/null || { log "unknown scenario $scenario"; exit 2; }
  log "== $scenario"
  [[ -n $HERALD_PID ]] || start_herald
  "scenario_$scenario"
done
stop_herald TERM

python3 benches/faults_summary.py "$OUT" "${SCENARIOS[@]}" | tee "$OUT/summary.md"
