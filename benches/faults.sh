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
#   node-kill         3 Herald nodes, uplink and downlink load spread over them; one node
#                     killed (SIGKILL), its terminals reconnect to the next node
#   takeover          3 nodes; the terminals of node 0 reach it through a proxy that cuts
#                     them off mid-run leaving node 0's side open (half-open connections);
#                     they reconnect to node 1, which takes their sessions over
#   rolling-upgrade   3 nodes under uplink and downlink load restarted one at a time as a
#                     Kubernetes StatefulSet rolls (node 2, 1, 0): SIGTERM, drain, exit,
#                     start, /readyz 200, minReadySeconds; the terminals move to the next
#                     node. With the default drain pacing (paced) and, not with --short,
#                     with all connections closed at once (unpaced); every node's /metrics
#                     sampled each second (target/faults/rolling-upgrade-*-metrics.csv),
#                     plotted by benches/rolling_plot.py (target/faults/rolling-upgrade.svg).
#                     Its nodes run kafka.cluster.session_timeout 30 s (the default): it runs
#                     last, as the node-kill and takeover scenarios' 6 s would not let a
#                     restarted node keep its partitions.
#
# It starts its own Kafka (port 19392, target/faults/kafka) so that killing it
# touches nothing else, and its own Herald (127.0.0.1:21885, HTTP :29095): node 0.
# node-kill, takeover and rolling-upgrade add nodes 1 and 2 (MQTT 21896-21897, HTTP
# 29106-29107), takeover its proxy (21905). Node I is kafka.cluster.node_id "faults-I",
# log target/faults/herald-I.log.
#
# Usage: benches/faults.sh [--short] [SCENARIO...]   (default: all, in the order above)
#   --short   seconds per scenario and small fleets: the variant scripts/test.sh runs
#             (debug binaries; about 5 minutes, of which rolling-upgrade takes 1)
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
  SCENARIOS=(kafka-down kafka-restart kill-uplink kill-downlink sigterm storm slow-device fanin-overload
    node-kill takeover rolling-upgrade)

OUT=target/faults
mkdir -p "$OUT"
export KAFKA_PORT=19392 KAFKA_DIR=$PWD/$OUT/kafka
# kafka.sh's 3 s broker session lets a broker starved of CPU for 3 s (2 cores, three
# Herald nodes and two load generators) fence itself; its metadata then lists no broker
# at all, and librdkafka 2.12 clients (Herald's and the load generator's) drop the broker
# for good (confluentinc/librdkafka#5301): every client stays cut off from a Kafka that
# serves again. Kafka's default, 9 s, costs a SIGKILLed Kafka 6 s more before it serves.
export KAFKA_EXTRA_PROPS="broker.session.timeout.ms=9000"
KAFKA=127.0.0.1:$KAFKA_PORT
PORT=21885 # node 0; node I > 0 listens on PORT + 10 + I (node_port)
HTTP=29095 # node 0; node I > 0 on HTTP + 10 + I (node_http)
PROXY_PORT=$((PORT + 20)) # the takeover scenario's proxy to node 0
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
SETTLE=$(pick 30 25)               # seconds the tool keeps reading Kafka after the load (a restarted Kafka serves ~10 s later)
STORM=$(pick 18000 1000)           # terminals in the reconnect storm
DRAIN=$(pick 10s 2s)               # broker.drain_period
SESSION_TIMEOUT=6                  # kafka.cluster.session_timeout, seconds (Kafka's minimum)
# rolling-upgrade: a bigger uplink fleet, so that a node holds enough connections for the
# drain's pacing (1000/s by default) to matter: ~2,070 (full) and ~410 (short) per node.
ROLL_TERMINALS=$(pick 6000 1200)   # its uplink fleet (the downlink fleet: TERMINALS)
ROLL_CONNECT_RATE=$(pick 2000 1000) # its uplink fleet's connects per second at the start
ROLL_RUN=$(pick 90 40)             # seconds of load: the whole roll must fit in it
MIN_READY=$(pick 10 3)             # minReadySeconds: ready this long before the next node

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
"heartbeat.interval.ms" = "1000"
[kafka.cluster]
# A killed node's downlink partitions move to the others within 6 s (Kafka's
# minimum) instead of 30 s, and its inbox is taken over about 6 s later.
# node_id, broker.listen and http.listen come from the environment (start_node).
session_timeout = "${SESSION_TIMEOUT}s"
orphan_check_interval = "1s"
[http]
listen = "127.0.0.1:$HTTP"
[log]
filter = "warn,herald_broker::server=info,herald_bridge=info"
TOML
}

# Herald nodes, all on $OUT/herald.toml with their own ports and node id from the
# environment. Node 0 is the suite's Herald (start_herald, stop_herald).
NODE_PIDS=()
node_port() { if (($1)); then echo $((PORT + 10 + $1)); else echo "$PORT"; fi; }
node_http() { if (($1)); then echo $((HTTP + 10 + $1)); else echo "$HTTP"; fi; }
node_id() { echo "faults-$1"; }
node_log() { echo "$OUT/herald-$1.log"; }
node_hosts() { # I... -> the -h list of these nodes
  local i list=()
  for i in "$@"; do list+=("127.0.0.1:$(node_port "$i")"); done
  local IFS=,
  echo "${list[*]}"
}

# Waits until PORT accepts connections while process PID lives.
wait_listening() { # PORT PID WHAT
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { log "$3 exited"; return 1; }
    sleep 0.1
  done
  log "$3 did not listen on $1"
  return 1
}

NODE_ENV=() # extra VAR=value settings of every node started (rolling-upgrade's)
start_node() { # I
  local i=$1
  env "${NODE_ENV[@]}" HERALD_BROKER__LISTEN="127.0.0.1:$(node_port "$i")" HERALD_HTTP__LISTEN="127.0.0.1:$(node_http "$i")" \
    HERALD_KAFKA__CLUSTER__NODE_ID="$(node_id "$i")" \
    "$HERALD_BIN" --config "$OUT/herald.toml" run >>"$(node_log "$i")" 2>&1 &
  NODE_PIDS[i]=$!
  wait_listening "$(node_port "$i")" "${NODE_PIDS[i]}" "Herald node $i (see $(node_log "$i"))"
}
# A node that does not exit within STOP_TIMEOUT of SIGTERM is killed, and the suite fails.
STOP_TIMEOUT=$((${DRAIN%s} + 60))
STUCK=()
running() { # PID: alive and not a zombie waiting to be reaped
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [[ $state != Z ]]
}
stop_node() { # I SIGNAL
  [[ -n ${NODE_PIDS[$1]:-} ]] || return 0
  kill "-$2" "${NODE_PIDS[$1]}" 2>/dev/null || true
  wait_stopped "$@"
}
wait_stopped() { # I SIGNAL: waits until node I, sent SIGNAL, exits
  local pid=${NODE_PIDS[$1]:-} deadline=$((SECONDS + STOP_TIMEOUT))
  [[ -n $pid ]] || return 0
  while running "$pid"; do
    if ((SECONDS >= deadline)); then
      log "Herald node $1 still runs $STOP_TIMEOUT s after SIG$2: SIGKILL (see $(node_log "$1"))"
      STUCK+=("node $1 ($(node_id "$1")) did not exit within $STOP_TIMEOUT s of SIG$2")
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 3600))
    fi
    sleep 0.2
  done
  wait "$pid" 2>/dev/null || true
  NODE_PIDS[$1]=
}
node_running() { [[ -n ${NODE_PIDS[$1]:-} ]]; }
start_herald() { start_node 0; }
stop_herald() { stop_node 0 "$1"; } # SIGNAL

# Waits until each node's /readyz answers 200 (presence view replayed, Kafka reachable).
wait_ready() { # I...
  local i
  for i in "$@"; do
    for _ in $(seq 600); do
      python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:$(node_http "$i")/readyz" 2>/dev/null && continue 2
      kill -0 "${NODE_PIDS[i]}" 2>/dev/null || { log "Herald node $i exited; see $(node_log "$i")"; return 1; }
      sleep 0.1
    done
    log "Herald node $i not ready after 60 s; see $(node_log "$i")"
    return 1
  done
}

cleanup() {
  local i
  for i in "${!NODE_PIDS[@]}"; do stop_node "$i" KILL; done
  jobs -p | xargs -r kill 2>/dev/null || true
  kafka stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# One Prometheus sample from a node (default node 0), summed over the series that
# have the labels given, e.g. 'herald_cluster_forwards_total{result="retried"}'; or
# empty if the node does not answer. With "series", each series instead, as a JSON
# object {"label=value,...": value}.
metric() { # NAME[{LABELS}] [NODE] [series]
  python3 - "$(node_http "${2:-0}")" "$1" "${3:-sum}" <<'PY' 2>/dev/null || true
import json, re, sys, urllib.request
port, wanted, mode = sys.argv[1:4]
name, _, labels = wanted.partition("{")
labels = re.findall(r'\w+="[^"]*"', labels)
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
series = {l.rsplit(" ", 1)[0][len(name):].strip("{}").replace('"', ""): float(l.rsplit(" ", 1)[1])
          for l in text.splitlines()
          if l.startswith(name) and l[len(name)] in " {" and all(p in l for p in labels)}
print(json.dumps({k: int(v) for k, v in series.items()}) if mode == "series" else int(sum(series.values())))
PY
}

# Samples herald_connections of node 0 every 100 ms into FILE until it exits.
sample_connections() { # FILE
  local start
  start=$(date +%s.%N)
  echo "seconds,connections" >"$1"
  while kill -0 "${NODE_PIDS[0]}" 2>/dev/null; do
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
uplink_load() { load uplink "$1" -c "$TERMINALS" -R 500 -r "$UPLINK_RATE" -d "$RUN" "${@:2}"; } # NAME [args...]
downlink_load() { load downlink "$1" -c "$TERMINALS" -R 500 -r "$DOWNLINK_RATE" -d "$RUN" "${@:2}"; }
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
  stop_herald TERM
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
  local terminals
  terminals=$(pick 20 10)
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

# --- The cluster scenarios -----------------------------------------------------------------

# Nodes 1 and 2 next to node 0, all three ready; stopped (SIGTERM) by stop_cluster, node 0 stays.
start_cluster() {
  local i
  for i in 1 2; do node_running "$i" || start_node "$i"; done
  wait_ready 0 1 2
}
stop_cluster() { stop_node 1 TERM; stop_node 2 TERM; }

now_ms() { date +%s%3N; }

# Writes FILE as a JSON object of KEY=VALUE pairs: dots in KEY nest objects; a VALUE that
# is valid JSON (a number, a list) stays so, anything else is a string ("" if empty).
write_json() { # FILE KEY=VALUE...
  python3 - "$@" <<'PY'
import json, sys
out = {}
for pair in sys.argv[2:]:
    key, _, value = pair.partition("=")
    try:
        value = json.loads(value)
    except ValueError:
        pass
    *parents, last = key.split(".")
    node = out
    for parent in parents:
        node = node.setdefault(parent, {})
    node[last] = value
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=2)
PY
}

# The run tag (prefix of every message id) of a load report, or empty.
run_tag() { # NAME
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["run_tag"])' "$OUT/$1.json" 2>/dev/null || true
}

# The records of TOPIC whose printed form contains TEXT, into FILE: one line each,
# "CreateTime:<ms>\t<value>" with the value's bytes printed as Kafka's Bytes (\xNN escapes).
dump_topic() { # TOPIC TEXT FILE
  if [[ -z $2 ]]; then
    log "no run tag to look for in $1"
    : >"$3"
    return 0
  fi
  # One group for every dump, never committed to: each reads from the beginning, and
  # no console-consumer-<random> group is left behind per dump.
  kafka console-consumer "$1" --from-beginning --timeout-ms 5000 --property print.timestamp=true \
    --group faults-dump --consumer-property enable.auto.commit=false \
    --property value.deserializer=org.apache.kafka.common.serialization.BytesDeserializer \
    2>"$3.err" | { grep -F -- "$2" || true; } >"$3" || log "reading $1 failed; see $3.err"
}

# Log lines of the given nodes that say so, each after its node's id, for the summary.
node_lines() { # PATTERN I...
  local i pattern=$1
  shift
  for i in "$@"; do grep -h -- "$pattern" "$(node_log "$i")" | sed "s/^/$(node_id "$i"): /" || true; done
}

# Node 1 dies (SIGKILL) under uplink and downlink load spread over the 3 nodes. Its
# terminals reconnect to node 2 (the next -h entry); its downlink partitions move after
# kafka.cluster.session_timeout, its inbox is taken over by a survivor about one more
# session timeout later.
scenario_node-kill() {
  start_cluster
  local hosts killed=1 killed_at started_at
  hosts=$(node_hosts 0 1 2)
  started_at=$(now_ms)
  uplink_load node-kill-uplink -h "$hosts" --move-on-reconnect
  downlink_load node-kill-downlink -h "$hosts" --move-on-reconnect
  at "$FAULT_AT"
  killed_at=$(now_ms)
  log "node $killed ($(node_id "$killed")) killed (SIGKILL) under load"
  stop_node "$killed" KILL
  wait_load
  dump_topic herald.receipts "$(run_tag node-kill-downlink)" "$OUT/node-kill-receipts.txt"
  local i survivors=()
  for i in 0 2; do
    survivors+=(
      "survivors.$(node_id "$i").gone_nodes=$(metric herald_cluster_gone_nodes "$i")"
      "survivors.$(node_id "$i").adopted_inboxes=$(metric herald_cluster_adopted_inboxes "$i")"
      "survivors.$(node_id "$i").forwards_ok=$(metric 'herald_cluster_forwards_total{result="ok"}' "$i")"
      "survivors.$(node_id "$i").forwards_retried=$(metric 'herald_cluster_forwards_total{result="retried"}' "$i")"
      # The partitions each consumer has, and how far behind it is on them.
      "survivors.$(node_id "$i").consumer_lag=$(metric herald_kafka_consumer_lag_messages "$i" series)"
    )
  done
  write_json "$OUT/node-kill-cluster.json" nodes=3 "killed=$(node_id "$killed")" killed_entry="$killed" \
    "started_at_ms=$started_at" "killed_at_ms=$killed_at" "session_timeout_s=$SESSION_TIMEOUT" \
    "downlink_clients=fault-node-kill-downlink-" "receipts=node-kill-receipts.txt" \
    "${survivors[@]}" \
    "log=$(node_lines 'gone node' 0 2)" "fatal=$(node_lines FATAL 0 1 2)"
  stop_cluster
}

# A TCP proxy for the takeover scenario: forwards connections on LISTEN to node 0 until
# SIGUSR1, then cuts them off: it stops listening and closes the terminals' side, while it
# keeps node 0's side open and reads (and drops) whatever node 0 still sends, as a NAT or
# a network change leaves a connection half-open. On SIGTERM it writes REPORT: the
# connections open at the cut and, for those node 0 closed, ms from the cut to the close.
takeover_proxy() { # LISTEN UPSTREAM REPORT
  # exec: run in the background, the signals must reach Python, not a subshell.
  exec python3 - "$@" <<'PY'
import asyncio, json, signal, sys, time

listen, upstream, report = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
connections, closed_after_ms = set(), []
cut = {"at": None, "open": 0, "accepted": 0, "bytes_after": 0}

async def serve(terminal_reader, terminal):
    cut["accepted"] += 1
    try:
        node_reader, node = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        terminal.close()
        return
    connection = (terminal, node)
    connections.add(connection)

    async def to_node():
        try:
            while data := await terminal_reader.read(65536):
                if cut["at"] is not None:
                    return
                node.write(data)
                await node.drain()
        except OSError:
            pass
        if cut["at"] is None:  # the terminal hung up before the cut: so does the proxy
            node.close()

    async def to_terminal():
        try:
            while data := await node_reader.read(65536):
                if cut["at"] is None:
                    terminal.write(data)
                    await terminal.drain()
                else:
                    cut["bytes_after"] += len(data)
        except OSError:
            pass
        if cut["at"] is not None and connection in connections:
            closed_after_ms.append(round((time.monotonic() - cut["at"]) * 1000))
        terminal.close()
        connections.discard(connection)

    await asyncio.gather(to_node(), to_terminal())
    connections.discard(connection)

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen)
    loop, done = asyncio.get_running_loop(), asyncio.Event()

    def cut_off():
        cut["at"], cut["open"] = time.monotonic(), len(connections)
        server.close()
        for terminal, _ in connections:
            terminal.transport.abort()

    loop.add_signal_handler(signal.SIGUSR1, cut_off)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    await done.wait()
    closed = sorted(closed_after_ms)
    with open(report, "w") as f:
        json.dump({"accepted": cut["accepted"], "open_at_cut": cut["open"],
                   "closed_by_node": len(closed), "closed_after_ms": closed,
                   "bytes_from_node_after_cut": cut["bytes_after"]}, f, indent=2)

asyncio.run(main())
PY
}

# The terminals of node 0 (a third of the fleet, uplink and downlink) reach it through
# takeover_proxy, which cuts them off mid-run and leaves node 0's side of their
# connections open. They reconnect to node 1 (--move-on-reconnect) while commands and
# scans flow; node 0 must see them in the presence topic, close the half-open
# connections (taken over) and let node 1 have what was waiting for them.
scenario_takeover() {
  start_cluster
  takeover_proxy "$PROXY_PORT" "$(node_port 0)" "$OUT/takeover-proxy.json" &
  local proxy=$! hosts takeovers_before started_at
  wait_listening "$PROXY_PORT" "$proxy" "the takeover proxy"
  hosts="127.0.0.1:$PROXY_PORT,$(node_hosts 1 2)"
  takeovers_before=$(metric herald_cluster_takeovers_total 0)
  started_at=$(now_ms)
  # Cut off, a terminal waits up to 1 s before it reconnects (firmware backoff): node 0
  # goes on sending it commands meanwhile, which must reach it on node 1.
  local moving=(-h "$hosts" --move-on-reconnect --backoff-initial-ms 1000)
  uplink_load takeover-uplink "${moving[@]}"
  downlink_load takeover-downlink "${moving[@]}"
  at "$FAULT_AT"
  log "the terminals of node 0 cut off, half-open on its side; they move to node 1"
  local cut_at
  cut_at=$(now_ms)
  kill -USR1 "$proxy"
  wait_load
  # Node 0's side of the connections it did not close goes now; nothing of it may
  # reach the presence topic.
  kill -TERM "$proxy"
  wait "$proxy" || log "the takeover proxy failed"
  sleep 2
  dump_topic herald.presence fault-takeover- "$OUT/takeover-presence.txt"
  write_json "$OUT/takeover-cluster.json" nodes=3 "from=$(node_id 0)" "to=$(node_id 1)" \
    from_entry=0 "started_at_ms=$started_at" "cut_at_ms=$cut_at" \
    "takeovers_before=$takeovers_before" "takeovers_after=$(metric herald_cluster_takeovers_total 0)" \
    "clients=[\"fault-takeover-uplink-\", \"fault-takeover-downlink-\"]" \
    "terminals=$TERMINALS" "proxy=takeover-proxy.json" "presence=takeover-presence.txt" \
    "fatal=$(node_lines FATAL 0 1 2)"
  stop_cluster
}

# --- Rolling upgrade ------------------------------------------------------------------------

# Samples every node's /metrics once a second into FILE until SIGTERM: one CSV row per node
# that answered, "ms,node,connections,accepted,rate_limited,refused_other,uplinks_inflight"
# (unix ms; herald_connects_total by result: accepted, rate_limited, the other refusals;
# herald_uplinks_inflight: uplinks waiting for Kafka's acknowledgement).
sample_nodes() { # FILE PORT...
  exec python3 - "$@" <<'PY'
import signal, sys, time, urllib.request

out, ports = sys.argv[1], sys.argv[2:]
stop = False
signal.signal(signal.SIGTERM, lambda *_: globals().update(stop=True))

def sample(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5).read().decode()
    connections, inflight, connects = 0, 0, {}
    for line in text.splitlines():
        if line.startswith("herald_connections "):
            connections = int(float(line.split()[-1]))
        elif line.startswith("herald_uplinks_inflight "):
            inflight = int(float(line.split()[-1]))
        elif line.startswith("herald_connects_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            connects[result] = int(float(line.split()[-1]))
    accepted = connects.pop("accepted", 0)
    limited = connects.pop("rate_limited", 0)
    return connections, accepted, limited, sum(connects.values()), inflight

with open(out, "w", buffering=1) as f:
    f.write("ms,node,connections,accepted,rate_limited,refused_other,uplinks_inflight\n")
    next_at = time.monotonic()
    while not stop:
        for node, port in enumerate(ports):
            try:
                row = sample(port)
            except (OSError, ValueError, IndexError):
                continue
            f.write(f"{round(time.time() * 1000)},{node}," + ",".join(map(str, row)) + "\n")
        next_at += 1.0
        time.sleep(max(0.0, next_at - time.monotonic()))
PY
}

# Appends "ms,node,event" to FILE (ms: now unless given).
roll_event() { echo "${4:-$(now_ms)},$2,$3" >>"$1"; } # FILE I EVENT [MS]

# Sends node I SIGTERM and polls its /readyz every 10 ms until it stops answering 200.
# Prints "SIGTERM_MS READYZ_MS WHAT": unix ms of the signal and of the first answer that
# was not 200, and that answer ("503 draining", or "refused" if the HTTP server was
# gone), or "200" if /readyz still said ready after 10 s.
term_watching_readyz() { # I
  python3 - "${NODE_PIDS[$1]}" "$(node_http "$1")" <<'PY'
import os, signal, sys, time, urllib.error, urllib.request
pid, port = int(sys.argv[1]), sys.argv[2]
ms = lambda: round(time.time() * 1000)
sent = ms()
os.kill(pid, signal.SIGTERM)
deadline, what = time.monotonic() + 10, "200"
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).read()
    except urllib.error.HTTPError as e:
        what = f"{e.code} {e.read().decode(errors='replace').strip()[:40]}"
        break
    except OSError:
        what = "refused"
        break
    time.sleep(0.01)
print(sent, ms(), what)
PY
}

# Restarts node I as Kubernetes rolls a pod: SIGTERM, /readyz turns 503, the drain, the
# process exits; started again with the same node id; /readyz 200; then minReadySeconds
# before the next node. Each step goes to EVENTS.
roll_node() { # I EVENTS
  local i=$1 events=$2 sent readyz_at readyz
  log "rolling node $i ($(node_id "$i")): SIGTERM"
  read -r sent readyz_at readyz < <(term_watching_readyz "$i") || true
  roll_event "$events" "$i" sigterm "${sent:-}"
  roll_event "$events" "$i" "readyz ${readyz:-?}" "${readyz_at:-}"
  wait_stopped "$i" TERM
  roll_event "$events" "$i" exited
  start_node "$i"
  roll_event "$events" "$i" listening
  wait_ready "$i"
  roll_event "$events" "$i" ready
  sleep "$MIN_READY"
  roll_event "$events" "$i" min_ready
}

# One roll of the three nodes under load. VARIANT paced: Herald's default drain settings
# (drain_period 20 s, drain_rate 1000/s); unpaced: every connection closed at once
# (drain_period 0 s). Reports rolling-upgrade-VARIANT-{uplink,downlink}.json, the nodes'
# metrics (-metrics.csv), the roll's steps (-events.csv) and -cluster.json.
roll_variant() { # VARIANT
  local variant=$1 name=rolling-upgrade-$1 i
  NODE_ENV=(HERALD_KAFKA__CLUSTER__SESSION_TIMEOUT=30s)
  case $variant in
    paced) NODE_ENV+=(HERALD_BROKER__DRAIN_PERIOD=20s HERALD_BROKER__DRAIN_RATE=1000) ;;
    unpaced) NODE_ENV+=(HERALD_BROKER__DRAIN_PERIOD=0s HERALD_BROKER__DRAIN_RATE=1000000) ;;
  esac
  log "$variant: the 3 nodes (re)started with ${NODE_ENV[*]}"
  for i in 0 1 2; do stop_node "$i" TERM; done
  for i in 0 1 2; do start_node "$i"; done
  wait_ready 0 1 2
  local events=$OUT/$name-events.csv metrics=$OUT/$name-metrics.csv sampler
  echo "ms,node,event" >"$events"
  sample_nodes "$metrics" "$(node_http 0)" "$(node_http 1)" "$(node_http 2)" &
  sampler=$!
  local started_at roll_started_at roll_ended_at load_ended_at
  local moving=(-h "$(node_hosts 0 1 2)" --move-on-reconnect)
  started_at=$(now_ms)
  load uplink "$name-uplink" -c "$ROLL_TERMINALS" -R "$ROLL_CONNECT_RATE" -r "$UPLINK_RATE" \
    -d "$ROLL_RUN" "${moving[@]}"
  load downlink "$name-downlink" -c "$TERMINALS" -R 500 -r "$DOWNLINK_RATE" -d "$ROLL_RUN" \
    "${moving[@]}"
  at "$FAULT_AT"
  roll_started_at=$(now_ms)
  # A StatefulSet rolls its pods from the highest ordinal down.
  for i in 2 1 0; do roll_node "$i" "$events"; done
  roll_ended_at=$(now_ms)
  log "$variant: roll done in $(((roll_ended_at - roll_started_at) / 1000)) s; waiting for the load"
  wait_load
  load_ended_at=$(now_ms)
  kill -TERM "$sampler"
  wait "$sampler" 2>/dev/null || true
  write_json "$OUT/$name-cluster.json" nodes=3 "variant=$variant" "node_env=${NODE_ENV[*]}" \
    "started_at_ms=$started_at" "roll_started_at_ms=$roll_started_at" \
    "roll_ended_at_ms=$roll_ended_at" "load_ended_at_ms=$load_ended_at" \
    "load_seconds=$ROLL_RUN" "min_ready_s=$MIN_READY" "order=[2, 1, 0]" \
    "uplink_terminals=$ROLL_TERMINALS" "downlink_terminals=$TERMINALS" \
    "events=$name-events.csv" "metrics=$name-metrics.csv" \
    "fatal=$(node_lines FATAL 0 1 2)"
  for i in 0 1 2; do stop_node "$i" TERM; done
  NODE_ENV=()
}

scenario_rolling-upgrade() {
  local variant variants=(paced)
  ((SHORT)) || variants+=(unpaced)
  rm -f "$OUT"/rolling-upgrade[.-]* # a variant this run skips must not show an earlier run's files
  for variant in "${variants[@]}"; do roll_variant "$variant"; done
  python3 benches/rolling_plot.py "$OUT" "$OUT/rolling-upgrade.svg" "${variants[@]}" ||
    log "rolling-upgrade: no plot"
}

log "Kafka on $KAFKA ($KAFKA_DIR)"
kafka start >/dev/null
for i in 0 1 2; do : >"$(node_log "$i")"; done
write_config device
start_herald
# Herald creates its topics on a fresh Kafka before it is ready; the load tool
# reads the uplink topic's end offsets first.
wait_ready 0
LOAD_PIDS=()
for scenario in "${SCENARIOS[@]}"; do
  declare -F "scenario_$scenario" >/dev/null || { log "unknown scenario $scenario"; exit 2; }
  log "== $scenario"
  node_running 0 || { start_herald && wait_ready 0; }
  "scenario_$scenario"
done
stop_herald TERM

summary=0
python3 benches/faults_summary.py "$OUT" "${SCENARIOS[@]}" | tee "$OUT/summary.md" || summary=1
if ((${#STUCK[@]})); then
  printf 'Herald did not stop: %s\n' "${STUCK[@]}" | tee -a "$OUT/summary.md"
  summary=1
fi
((summary == 0)) # the exit status
