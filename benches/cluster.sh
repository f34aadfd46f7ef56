#!/usr/bin/env bash
# Benchmark: what a node group costs (issue #9), measured on 1, 2 and 3 nodes of
# scripts/cluster.sh on the local Kafka, every node and load generator on this machine.
#
# Phases (each on a fresh cluster with topics and a consumer group of its own):
#   sessions  idle device sessions: SESSIONS per node (herald-loadtest storm, one process
#             per node, each spread over every node with -h), held; each node's RSS before
#             and while held -> bytes per session; presence records written and bytes each
#             node's presence view read. Then the storm: every terminal drops and
#             reconnects at once -> how long until all are back, presence records written
#             and read during it, how long until every node's view has settled.
#   downlink  herald-loadtest downlink spread over all nodes (a warm-up run, then the
#             measured one): per command, Kafka records written (receipt + forwards) and
#             read (command + inbox records), from every node's /metrics, and the forwards
#             one hop each would make (recomputed from the fixed client ids, librdkafka's
#             CRC-32 partitioner and each node's partitions); delivery latency
#             p50/p99/p99.9, 1 node (all local) against 2 and 3 (mostly forwarded), and
#             the receipts' latency_ms split into local and forwarded commands.
#             CLUSTER_ROUNDS rounds, the node counts alternating within each round.
#   kill      2 and 3 nodes: reconnecting downlink terminals (--move-on-reconnect) spread
#             over the nodes, the last node SIGKILLed mid-run: how long until its terminals
#             are connected to the others, how long until a survivor adopts its inbox;
#             presence traffic; commands lost (must be 0).
#   fill      once, 1 node: a fresh presence topic created by Herald (12 partitions,
#             compacted), filled with FILL_DEVICES online records by herald-loadtest
#             presence-fill, then the node started on it: replay time (log line "presence
#             view ready ... took=") and RSS; the topic's size on disk.
#
# Usage: benches/cluster.sh [PHASE...]          (default: sessions downlink kill fill)
# Environment (all optional):
#   CLUSTER_NODES="1 2 3"        node counts (kill uses those >= 2)
#   CLUSTER_ROUNDS=2             rounds of the downlink phase
#   SESSIONS=15000               idle sessions per node (a node holds <= ~19,000 with
#                                20,000 open files; so does one load-generator process)
#   CONNRATE=1500                connects per second of each load-generator process
#   HOLD=25                      seconds the sessions are held before the storm
#   DL_TERMINALS=300 DL_RATE=400 DL_SECONDS=25    the measured downlink run
#   KILL_TERMINALS=3000 KILL_RATE=100 KILL_SECONDS=60 KILL_AT=20
#   FILL_DEVICES=1000000 FILL_NODES=50
#   CLUSTER_KEEP_TOPICS=1        keep the runs' topics (default: deleted after each cluster)
# Nodes: scripts/cluster.sh with HERALD_CLUSTER_DIR=target/bench/cluster/nodes, MQTT
# 127.0.0.1:24884+I, HTTP :24984+I, deploy/herald.dev.toml (the development fleet key)
# with the listener's connect-rate limit off (benchmarks measure capacity).
# It waits while benches/{faults,ab,compare,fleet}.sh run, and samples the machine every
# 2 s (monitor.log): measurements another benchmark or a compiler overlapped are marked *.
# Output: a table on stdout; target/bench/cluster/<run>/ holds the load generator's
# reports, /metrics and RSS snapshots, node logs and results.json (also copied to
# target/bench/cluster/results.json). Results: docs/benchmarks.md#node-group-issue-9.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PHASES=("$@")
((${#PHASES[@]})) || PHASES=(sessions downlink kill fill)
for phase in "${PHASES[@]}"; do
  case $phase in
    sessions | downlink | kill | fill) ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "cluster.sh: unknown phase $phase (sessions, downlink, kill, fill)" >&2; exit 2 ;;
  esac
done

read -r -a NODE_COUNTS <<<"${CLUSTER_NODES:-1 2 3}"
ROUNDS=${CLUSTER_ROUNDS:-2}
SESSIONS=${SESSIONS:-15000}
CONNRATE=${CONNRATE:-1500}
HOLD=${HOLD:-25}
DL_TERMINALS=${DL_TERMINALS:-300}
DL_RATE=${DL_RATE:-400}
DL_SECONDS=${DL_SECONDS:-25}
KILL_TERMINALS=${KILL_TERMINALS:-3000}
KILL_RATE=${KILL_RATE:-100}
KILL_SECONDS=${KILL_SECONDS:-60}
KILL_AT=${KILL_AT:-20}
FILL_DEVICES=${FILL_DEVICES:-1000000}
FILL_NODES=${FILL_NODES:-50}

ROOT=target/bench/cluster
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/$RUN_ID
mkdir -p "$OUT"
LT=target/release/herald-loadtest
CLUSTER=scripts/cluster.sh
MQTT_BASE=24884
HTTP_BASE=24984
export HERALD_CLUSTER_DIR=$ROOT/nodes HERALD_CLUSTER_MQTT_PORT=$MQTT_BASE HERALD_CLUSTER_HTTP_PORT=$HTTP_BASE
export HERALD_PROFILE=release
export HERALD_BROKER__ADMISSION__MAX_CONNECT_RATE=0
FLEET_KEY=$(sed -n 's/^fleet_key *= *"\(.*\)"/\1/p' deploy/herald.dev.toml | head -n 1)
KAFKA=127.0.0.1:9092

say() { echo "cluster-bench: $*" >&2; }

cargo build --release --locked -q -p herald -p herald-loadtest
KAFKA_DIR=$(deploy/kafka/kafka.sh env | sed -n 's/^KAFKA_DIR=//p')
deploy/kafka/kafka.sh start >/dev/null
{
  echo "run=$RUN_ID"
  echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- herald bridge broker kafka loadtest || echo -dirty)"
  echo "machine=$(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), open files $(ulimit -n)"
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  printf 'settings=SESSIONS=%s CONNRATE=%s HOLD=%s DL_TERMINALS=%s DL_RATE=%s DL_SECONDS=%s KILL_TERMINALS=%s KILL_RATE=%s KILL_AT=%s FILL_DEVICES=%s FILL_NODES=%s\n' \
    "$SESSIONS" "$CONNRATE" "$HOLD" "$DL_TERMINALS" "$DL_RATE" "$DL_SECONDS" "$KILL_TERMINALS" \
    "$KILL_RATE" "$KILL_AT" "$FILL_DEVICES" "$FILL_NODES"
} >"$OUT/run.txt"

# --- The cluster -----------------------------------------------------------------------------

# Every 2 s: what else loads the machine (other benchmark scripts, compilers), so the
# summary can mark measurements something else ran during.
monitor() {
  while :; do
    echo "$(date +%s.%N) $(cut -d' ' -f1 /proc/loadavg) $(pgrep -fc 'benches/(faults|ab|compare|fleet)\.sh' || true) $(pgrep -xc rustc || true)"
    sleep 2
  done >>"$OUT/monitor.log"
}
monitor &
MONITOR=$!

N=0 DIR='' TAG='' LT_PIDS=()
cleanup() {
  local pid
  kill "$MONITOR" 2>/dev/null || true
  for pid in "${LT_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$CLUSTER" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Topic names and the consumer group of one cluster: nothing seen by another run.
fresh_names() { # TAG
  TAG=$1
  export HERALD_KAFKA__DOWNLINK__TOPIC=bench.cluster.$TAG.downlink
  export HERALD_KAFKA__DOWNLINK__RECEIPTS_TOPIC=bench.cluster.$TAG.receipts
  export HERALD_KAFKA__DOWNLINK__GROUP_ID=bench-cluster-$TAG
  export HERALD_KAFKA__PRESENCE__TOPIC=bench.cluster.$TAG.presence
}

# The other benchmark scripts load the same cores: wait until none runs.
wait_quiet() {
  while pgrep -f 'benches/(faults|ab|compare|fleet)\.sh' >/dev/null; do
    say "another benchmark runs ($(pgrep -af 'benches/(faults|ab|compare|fleet)\.sh' | head -n 1)): waiting"
    sleep 30
  done
}

HOSTS=
start_cluster() { # NODES DIR
  N=$1 DIR=$2
  wait_quiet
  mkdir -p "$DIR"
  rm -f "$HERALD_CLUSTER_DIR"/herald-*.log
  # What else ran: a busy machine shows in every figure.
  echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg); rustc $(pgrep -xc rustc || true); other herald $(pgrep -xc herald || true)" >"$DIR/machine"
  HOSTS=$("$CLUSTER" start "$N" 2>>"$DIR/cluster.log")
  sleep 3 # consumer groups joined, Kafka clients settled
}

stop_cluster() {
  "$CLUSTER" stop 2>>"$DIR/cluster.log" || true
  cp "$HERALD_CLUSTER_DIR"/herald-*.log "$DIR/" 2>/dev/null || true
  if [[ -z ${CLUSTER_KEEP_TOPICS:-} ]]; then
    deploy/kafka/kafka.sh topics --delete --topic "bench\\.cluster\\.${TAG//./\\.}\\..*" >/dev/null 2>&1 || true
  fi
}

node_pid() { cat "$HERALD_CLUSTER_DIR/herald-$1.pid" 2>/dev/null; }
http() { echo $((HTTP_BASE + $1)); }
metrics() { curl -sf --max-time 5 "http://127.0.0.1:$(http "$1")/metrics"; }
# The value of one series (exactly as exposed, labels included) on node I; 0 if absent.
metric() { # I SERIES
  metrics "$1" | awk -v m="$2" '$1 == m { v = $2 } END { print v + 0 }'
}
sum_metric() { # SERIES NODE...
  local series=$1 total=0 i v
  shift
  for i in "$@"; do
    v=$(metric "$i" "$series" 2>/dev/null || echo 0)
    total=$((total + ${v%.*}))
  done
  echo "$total"
}
all_nodes() { seq 0 $((N - 1)); }

# /metrics and VmRSS of every running node, and the time: DIR/snap-LABEL/.
snap() { # LABEL
  local d=$DIR/snap-$1 i pid
  mkdir -p "$d"
  date +%s.%N >"$d/time"
  # Machine-wide: connections the kernel dropped because a listener's accept queue was full.
  nstat -asz TcpExtListenOverflows TcpExtListenDrops 2>/dev/null |
    awk '/^TcpExt/ { print $1, $2 }' >"$d/nstat" || true
  for i in $(all_nodes); do
    pid=$(node_pid "$i") || continue
    [[ -r /proc/$pid/status ]] || continue
    awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" >"$d/node$i.rss_kib"
    metrics "$i" >"$d/node$i.prom" || rm -f "$d/node$i.prom"
  done
}

# Waits until the nodes' herald_connections add up to at least WANT; prints the seconds waited.
wait_connections() { # WANT TIMEOUT NODE...
  local want=$1 timeout=$2 start=$SECONDS
  shift 2
  until (($(sum_metric herald_connections "$@") >= want)); do
    ((SECONDS - start < timeout)) || { say "only $(sum_metric herald_connections "$@") of $want connected after $timeout s"; return 1; }
    sleep 0.5
  done
}

now() { date +%s.%N; }

# --- Phases ----------------------------------------------------------------------------------

phase_sessions() { # NODES
  local n=$1 p pids=() total t_storm t_done
  fresh_names "$RUN_ID-s$n"
  start_cluster "$n" "$OUT/sessions-n$n"
  total=$((SESSIONS * n))
  say "sessions, $n node(s): $n load generator(s) x $SESSIONS terminals over $HOSTS"
  snap before
  for p in $(seq 0 $((n - 1))); do
    "$LT" storm -h "$HOSTS" -c "$SESSIONS" -R "$CONNRATE" --hold "$HOLD" --fleet-key "$FLEET_KEY" \
      --client-id "cb-s$n-%p-%i" --report "$DIR/storm-$p.json" >"$DIR/storm-$p.out" 2>&1 &
    pids+=($!)
  done
  LT_PIDS=("${pids[@]}")
  # shellcheck disable=SC2046
  wait_connections "$total" $((SESSIONS / CONNRATE + 30)) $(all_nodes) || true
  sleep 7 # presence events acknowledged; librdkafka statistics (every 5 s) caught up
  snap held
  # The storm: every process drops its terminals HOLD s after its last connect.
  # shellcheck disable=SC2046
  until (($(sum_metric herald_connections $(all_nodes)) < total * 9 / 10)); do
    kill -0 "${pids[0]}" 2>/dev/null || break
    sleep 0.2
  done
  t_storm=$(now)
  for p in "${pids[@]}"; do wait "$p" || say "a storm process exited with $?"; done
  LT_PIDS=()
  # Settled: every node's view empty again (the storm's terminals leave once back).
  local deadline=$((SECONDS + 120)) i settled
  while ((SECONDS < deadline)); do
    settled=1
    for i in $(all_nodes); do
      (($(metric "$i" herald_cluster_view_devices) == 0)) || settled=0
    done
    ((settled)) && break
    sleep 0.2
  done
  t_done=$(now)
  echo "$t_storm $t_done" >"$DIR/storm-times"
  sleep 7
  snap after
  stop_cluster
}

# Client ids are PREFIX-<index>: the summary recomputes which commands had to be forwarded.
downlink_run() { # LABEL CLIENT_PREFIX TERMINALS RATE SECONDS [ARGS...]
  local label=$1 prefix=$2 terminals=$3 rate=$4 seconds=$5 rc=0
  shift 5
  "$LT" downlink -h "$HOSTS" -c "$terminals" -R 500 -r "$rate" -d "$seconds" --fleet-key "$FLEET_KEY" \
    --downlink-topic "$HERALD_KAFKA__DOWNLINK__TOPIC" --receipts-topic "$HERALD_KAFKA__DOWNLINK__RECEIPTS_TOPIC" \
    --client-id "$prefix-%i" --report "$DIR/$label.json" "$@" >"$DIR/$label.out" 2>&1 || rc=$?
  ((rc == 0)) || say "$label: herald-loadtest downlink exited with $rc (see $DIR/$label.out)"
}

phase_downlink() { # NODES ROUND
  local n=$1 r=$2
  fresh_names "$RUN_ID-d$n-r$r"
  start_cluster "$n" "$OUT/downlink-n$n-r$r"
  # The topic must have been created by Herald (12 partitions), not auto-created.
  deploy/kafka/kafka.sh topics --describe --topic "$HERALD_KAFKA__DOWNLINK__TOPIC" 2>/dev/null |
    grep -c 'Partition: ' >"$DIR/downlink-partitions" || true
  say "downlink, $n node(s), round $r: warm-up"
  downlink_run warmup "cb-$TAG-w" 50 50 5 --ttl 60 --settle 20
  sleep 6
  snap before
  say "downlink, $n node(s), round $r: $DL_TERMINALS terminals, $DL_RATE commands/s for $DL_SECONDS s"
  echo "cb-$TAG-m" >"$DIR/client-prefix"
  downlink_run downlink "cb-$TAG-m" "$DL_TERMINALS" "$DL_RATE" "$DL_SECONDS" --ttl 60 --settle 30
  sleep 7
  snap after
  # The receipts, for the latency of local against forwarded commands (a receipt
  # carries latency_ms, from the command's creation to the device's PUBACK).
  deploy/kafka/kafka.sh console-consumer "$HERALD_KAFKA__DOWNLINK__RECEIPTS_TOPIC" --from-beginning \
    --timeout-ms 8000 --property line.separator=@@RCPT@@ >"$DIR/receipts.bin" 2>/dev/null || true
  stop_cluster
}

phase_kill() { # NODES
  local n=$1 victim=$(($1 - 1)) survivors t_kill t_back='' t_adopt='' lt
  fresh_names "$RUN_ID-k$n"
  start_cluster "$n" "$OUT/kill-n$n"
  survivors=$(seq 0 $((n - 2)))
  say "kill, $n nodes: $KILL_TERMINALS reconnecting terminals, node $victim SIGKILLed $KILL_AT s into the commands"
  "$LT" downlink -h "$HOSTS" -c "$KILL_TERMINALS" -R 1000 -r "$KILL_RATE" -d "$KILL_SECONDS" \
    --fleet-key "$FLEET_KEY" --move-on-reconnect --ttl 180 --settle 120 \
    --downlink-topic "$HERALD_KAFKA__DOWNLINK__TOPIC" --receipts-topic "$HERALD_KAFKA__DOWNLINK__RECEIPTS_TOPIC" \
    --client-id "cb-k$n-%p-%i" --report "$DIR/downlink.json" >"$DIR/downlink.out" 2>&1 &
  lt=$!
  LT_PIDS=("$lt")
  # shellcheck disable=SC2046
  wait_connections "$KILL_TERMINALS" 60 $(all_nodes) || true
  sleep $((KILL_AT + 2)) # the commands start 2 s after the connect phase
  snap before
  "$CLUSTER" kill "$victim" 2>>"$DIR/cluster.log"
  t_kill=$(now)
  # Back: the survivors hold every terminal. Adopted: one survivor consumes the dead
  # node's inbox (about two session timeouts later).
  local deadline=$((SECONDS + 150))
  while ((SECONDS < deadline)) && [[ -z $t_back || -z $t_adopt ]]; do
    # shellcheck disable=SC2086
    if [[ -z $t_back ]] && (($(sum_metric herald_connections $survivors) >= KILL_TERMINALS)); then
      t_back=$(now)
      sleep 7
      snap after-kill
    fi
    # shellcheck disable=SC2086
    if [[ -z $t_adopt ]] && (($(sum_metric herald_cluster_adopted_inboxes $survivors) >= 1)); then
      t_adopt=$(now)
    fi
    sleep 0.2
  done
  [[ -n $t_back ]] || snap after-kill
  echo "$t_kill ${t_back:-none} ${t_adopt:-none}" >"$DIR/kill-times"
  wait "$lt" || say "kill: herald-loadtest downlink exited with $? (see $DIR/downlink.out)"
  LT_PIDS=()
  snap end
  stop_cluster
}

phase_fill() {
  local log
  fresh_names "$RUN_ID-f"
  start_cluster 1 "$OUT/fill"
  snap empty
  "$CLUSTER" stop 2>>"$DIR/cluster.log" || true # the topic stays: Herald created it
  cp "$HERALD_CLUSTER_DIR/herald-0.log" "$DIR/herald-0.first.log" 2>/dev/null || true
  say "fill: $FILL_DEVICES devices over $FILL_NODES nodes into $HERALD_KAFKA__PRESENCE__TOPIC"
  "$LT" presence-fill --bootstrap-servers "$KAFKA" --topic "$HERALD_KAFKA__PRESENCE__TOPIC" \
    --devices "$FILL_DEVICES" --nodes "$FILL_NODES" >"$DIR/fill.out" 2>&1
  cat "$DIR/fill.out" >&2
  sleep 2
  # The topic on disk: the partitions' segment files (not the preallocated indexes).
  du -cb "$KAFKA_DIR"/data/"$HERALD_KAFKA__PRESENCE__TOPIC"-*/*.log 2>/dev/null | tail -n 1 | cut -f1 >"$DIR/topic-bytes" || true
  find "$KAFKA_DIR/data" -maxdepth 1 -name "$HERALD_KAFKA__PRESENCE__TOPIC-*" | wc -l >"$DIR/topic-partitions"
  log=$HERALD_CLUSTER_DIR/herald-0.log
  start_cluster 1 "$DIR" # waits for /readyz (the replay is over), then 3 s
  snap ready
  sleep 5
  snap settled
  grep 'presence view ready' "$log" | tail -n 1 >"$DIR/ready-line" || true
  say "fill: $(cat "$DIR/ready-line")"
  stop_cluster
}

# --- Run ----------------------------------------------------------------------------------------

has() { [[ " ${PHASES[*]} " == *" $1 "* ]]; }
if has sessions; then
  for n in "${NODE_COUNTS[@]}"; do phase_sessions "$n"; done
fi
if has downlink; then
  for r in $(seq "$ROUNDS"); do
    for n in "${NODE_COUNTS[@]}"; do phase_downlink "$n" "$r"; done
  done
fi
if has kill; then
  for n in "${NODE_COUNTS[@]}"; do ((n < 2)) || phase_kill "$n"; done
fi
if has fill; then phase_fill; fi

python3 - "$OUT" <<'PY'
import glob, json, os, re, shutil, sys, zlib

sys.path.insert(0, "benches")
from faults_summary import protobuf_fields  # the one protobuf reader of the bench scripts

out = sys.argv[1]
run = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "run.txt")))

def prom(path):
    """{series: value} of a /metrics snapshot."""
    values = {}
    try:
        for line in open(path):
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                pass
    except OSError:
        pass
    return values

def snap(d, label):
    base = os.path.join(d, f"snap-{label}")
    nodes = {}
    for f in glob.glob(os.path.join(base, "node*.rss_kib")):
        i = int(re.search(r"node(\d+)", f).group(1))
        nodes.setdefault(i, {})["rss_kib"] = int(open(f).read().split()[0])
    for f in glob.glob(os.path.join(base, "node*.prom")):
        i = int(re.search(r"node(\d+)", f).group(1))
        nodes.setdefault(i, {})["m"] = prom(f)
    try:
        t = float(open(os.path.join(base, "time")).read())
    except OSError:
        t = None
    return {"time": t, "nodes": nodes}

def nstat(s_dir, label):
    try:
        return {k: int(v) for k, v in (l.split() for l in open(os.path.join(s_dir, f"snap-{label}", "nstat")))}
    except (OSError, ValueError):
        return {}

def overflows(d, a, b):
    x, y = nstat(d, a), nstat(d, b)
    return y.get("TcpExtListenOverflows", 0) - x.get("TcpExtListenOverflows", 0) if x and y else None

def m(node, series):
    return node.get("m", {}).get(series, 0.0)

def delta(a, b, i, series):
    return m(b["nodes"].get(i, {}), series) - m(a["nodes"].get(i, {}), series)

def msum(s, series):
    return sum(m(n, series) for n in s["nodes"].values())

def report(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def pct(r, series="e2e"):
    p = (r or {}).get("latency_us", {}).get(series)
    return {k: p[k] / 1000 for k in ("p50", "p99", "p999", "max") if k in p} if p else None

MONITOR = []
try:
    for line in open(os.path.join(out, "monitor.log")):
        t, load, others, rustc = line.split()
        MONITOR.append((float(t), float(load), int(others), int(rustc)))
except (OSError, ValueError):
    pass

def disturbed(d, a, b):
    """Samples between snapshots a and b in which another benchmark or a compiler ran."""
    try:
        t0 = float(open(os.path.join(d, f"snap-{a}", "time")).read())
        t1 = float(open(os.path.join(d, f"snap-{b}", "time")).read())
    except (OSError, ValueError):
        return None
    return sum(1 for t, _, others, rustc in MONITOR if t0 <= t <= t1 and (others or rustc))

def machine(d):
    try:
        return open(os.path.join(d, "machine")).read().strip()
    except OSError:
        return None

def percentiles(values):
    v = sorted(values)
    at = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    return {"count": len(v), "mean": sum(v) / len(v), "p50": at(0.5), "p90": at(0.9),
            "p99": at(0.99), "p999": at(0.999), "max": v[-1]}

PRESENCE_OK = 'herald_presence_events_total{result="ok"}'
VIEW_RX = 'herald_kafka_client_rx_bytes_total{client="presence-view"}'
results = {"run": run, "sessions": [], "downlink": [], "kill": [], "fill": None}

for d in sorted(glob.glob(os.path.join(out, "sessions-n*"))):
    n = int(re.search(r"n(\d+)$", d).group(1))
    before, held, after = snap(d, "before"), snap(d, "held"), snap(d, "after")
    storms = [report(f) for f in sorted(glob.glob(os.path.join(d, "storm-*.json")))]
    storms = [s for s in storms if s]
    nodes = []
    for i in sorted(held["nodes"]):
        sessions = m(held["nodes"][i], "herald_connections")
        rss0 = before["nodes"].get(i, {}).get("rss_kib", 0)
        rss1 = held["nodes"][i].get("rss_kib", 0)
        nodes.append({
            "node": i, "sessions": int(sessions), "rss_before_kib": rss0, "rss_held_kib": rss1,
            "bytes_per_session": (rss1 - rss0) * 1024 / sessions if sessions else None,
            "view_devices": int(m(held["nodes"][i], "herald_cluster_view_devices")),
            "presence_view_rx_bytes_connect": delta(before, held, i, VIEW_RX),
            "presence_view_rx_bytes_storm": delta(held, after, i, VIEW_RX),
        })
    written_connect = sum(delta(before, held, i, PRESENCE_OK) for i in held["nodes"])
    written_storm = sum(delta(held, after, i, PRESENCE_OK) for i in after["nodes"])
    total = sum(x["sessions"] for x in nodes)
    try:
        t_storm, t_done = map(float, open(os.path.join(d, "storm-times")).read().split())
    except (OSError, ValueError):
        t_storm = t_done = None
    rec = [pct(s, "reconnect") for s in storms]
    results["sessions"].append({
        "nodes": n, "sessions": total, "per_node": nodes, "machine": machine(d),
        "disturbed_samples": disturbed(d, "before", "after"),
        "connect_failed": sum(s["connect_failed"] for s in storms),
        # The storm's report counts the reconnects among its connects: the first
        # connect phase took connected / achieved_connects_per_sec seconds.
        "connects_per_sec": sum(
            (s["connected"] - s["latency_us"].get("reconnect", {}).get("count", 0))
            / (s["connected"] / s["achieved_connects_per_sec"])
            for s in storms if s["achieved_connects_per_sec"]),
        "presence_written_connect": written_connect,
        "presence_written_storm": written_storm,
        "view_rx_bytes_per_record_connect": (
            sum(x["presence_view_rx_bytes_connect"] for x in nodes) / len(nodes) / written_connect
            if written_connect and nodes else None),
        "view_rx_bytes_per_record_storm": (
            sum(x["presence_view_rx_bytes_storm"] for x in nodes) / len(nodes) / written_storm
            if written_storm and nodes else None),
        "storm_all_back_s": max((s["duration_secs"] for s in storms), default=None),
        "storm_reconnect_ms": rec,
        "storm_reconnect_failed": sum(s["connect_failed"] for s in storms) ,
        "storm_view_settled_s": (t_done - t_storm) if t_storm else None,
        "listen_overflows_connect": overflows(d, "before", "held"),
        "listen_overflows_storm": overflows(d, "held", "after"),
    })

for d in sorted(glob.glob(os.path.join(out, "downlink-n*-r*"))):
    n, r = map(int, re.search(r"n(\d+)-r(\d+)$", d).groups())
    before, after = snap(d, "before"), snap(d, "after")
    rep = report(os.path.join(d, "downlink.json")) or {}
    dl = rep.get("downlink") or {}
    outcomes = {}
    for s in after["nodes"].values():
        for k in s.get("m", {}):
            if k.startswith("herald_downlinks_total{"):
                outcomes[k] = None
    by_outcome = {}
    for k in outcomes:
        o = re.search(r'outcome="([^"]*)"', k).group(1)
        by_outcome[o] = sum(delta(before, after, i, k) for i in after["nodes"])
    settled = sum(by_outcome.values())
    try:
        parts = int(open(os.path.join(d, "downlink-partitions")).read().strip() or 0)
    except (OSError, ValueError):
        parts = None
    fwd = sum(delta(before, after, i, 'herald_cluster_forwards_total{result="ok"}') for i in after["nodes"])
    retried = sum(delta(before, after, i, 'herald_cluster_forwards_total{result="retried"}') for i in after["nodes"])
    rx = {}
    for i in after["nodes"]:
        for k in after["nodes"][i].get("m", {}):
            mm = re.match(r'herald_kafka_client_(rx|tx)_bytes_total\{client="([^"]*)"\}', k)
            if mm:
                key = f"{mm.group(1)}:{mm.group(2)}"
                rx[key] = rx.get(key, 0) + delta(before, after, i, k)
    f = fwd / settled if settled else None
    # The forwards one hop each would make: command seq goes to terminal seq % terminals,
    # connected to node (seq % terminals) % n; its partition is librdkafka's default
    # (consistent_random: CRC-32 of the key); the node consuming that partition (from
    # the consumer-lag series) forwards it unless it is the terminal's node.
    owner = {}
    for i, s in after["nodes"].items():
        for k in s.get("m", {}):
            mm = re.match(r'herald_kafka_consumer_lag_messages\{client="downlink",partition="(\d+)",topic="[^"]*\.downlink"\}', k)
            if mm:
                owner[int(mm.group(1))] = i
    expected_fwd = None
    try:
        prefix = open(os.path.join(d, "client-prefix")).read().strip()
    except OSError:
        prefix = None
    if prefix and rep.get("clients") and dl.get("produced") and parts:
        terminals = rep["clients"]
        per_terminal = [0] * terminals
        for seq in range(dl["produced"]):
            per_terminal[seq % terminals] += 1
        expected_fwd = 0
        for t in range(terminals):
            p = zlib.crc32(f"{prefix}-{t}".encode()) % parts
            if p not in owner:
                expected_fwd = None
                break
            if owner[p] != t % n:
                expected_fwd += per_terminal[t]
    # Local against forwarded commands of this run, from their receipts.
    split = {"local": [], "forwarded": []}
    try:
        raw = open(os.path.join(d, "receipts.bin"), "rb").read()
    except OSError:
        raw = b""
    if prefix and owner and parts:
        for rec in raw.split(b"@@RCPT@@"):
            try:
                fields = protobuf_fields(rec)
            except (IndexError, ValueError):
                continue
            device = fields.get(2, "")
            if isinstance(device, bytes):
                device = device.decode(errors="replace")
            if not device.startswith(prefix + "-") or fields.get(3) != 1:
                continue
            t = int(device.rsplit("-", 1)[1])
            p = zlib.crc32(device.encode()) % parts
            split["forwarded" if owner.get(p, t % n) != t % n else "local"].append(fields.get(5, 0))
    by_route = {k: percentiles(v) for k, v in split.items() if v}
    results["downlink"].append({
        "receipt_latency_ms_by_route": by_route,
        "nodes": n, "round": r, "machine": machine(d), "disturbed_samples": disturbed(d, "before", "after"), "produced": dl.get("produced"), "delivered": dl.get("delivered"),
        "lost": dl.get("lost"), "duplicated": dl.get("duplicated"),
        "settled_by_outcome": by_outcome, "forwards_ok": fwd, "forwards_retried": retried,
        "f": f, "expected_f": (n - 1) / n, "one_hop_forwards": expected_fwd,
        "partitions_per_node": {i: sum(1 for o in owner.values() if o == i) for i in sorted(after["nodes"])},
        "records_written_per_command": 1 + f if f is not None else None,
        "records_read_per_command": 1 + f if f is not None else None,
        "kafka_client_bytes": rx, "command_topic_partitions": parts,
        "latency_ms": pct(rep), "connect_failed": rep.get("connect_failed"),
    })

for d in sorted(glob.glob(os.path.join(out, "kill-n*"))):
    n = int(re.search(r"n(\d+)$", d).group(1))
    before, after, end = snap(d, "before"), snap(d, "after-kill"), snap(d, "end")
    rep = report(os.path.join(d, "downlink.json")) or {}
    dl = rep.get("downlink") or {}
    try:
        t_kill, t_back, t_adopt = open(os.path.join(d, "kill-times")).read().split()
        back = float(t_back) - float(t_kill) if t_back != "none" else None
        adopt = float(t_adopt) - float(t_kill) if t_adopt != "none" else None
    except (OSError, ValueError):
        back = adopt = None
    survivors = sorted(after["nodes"])
    results["kill"].append({
        "nodes": n, "machine": machine(d), "disturbed_samples": disturbed(d, "before", "end"), "terminals": rep.get("clients"), "back_on_survivors_s": back,
        "inbox_adopted_s": adopt,
        "presence_written": sum(delta(before, after, i, PRESENCE_OK) for i in survivors),
        "presence_view_rx_bytes_per_survivor": [delta(before, after, i, VIEW_RX) for i in survivors],
        "reconnect_ms": pct(rep, "reconnect"), "reconnects": rep.get("reconnects"),
        "produced": dl.get("produced"), "delivered": dl.get("delivered"), "lost": dl.get("lost"),
        "duplicated": dl.get("duplicated"), "latency_ms": pct(rep),
        "takeovers": sum(m(s, "herald_cluster_takeovers_total") for s in end["nodes"].values()),
        "adopted_inboxes": [m(end["nodes"][i], "herald_cluster_adopted_inboxes") for i in sorted(end["nodes"])],
    })

d = os.path.join(out, "fill")
if os.path.isdir(d):
    empty, ready, settled = snap(d, "empty"), snap(d, "ready"), snap(d, "settled")
    line = open(os.path.join(d, "ready-line")).read().strip() if os.path.exists(os.path.join(d, "ready-line")) else ""
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    took = None
    mm = re.search(r"took=([0-9.]+)(ns|µs|us|ms|s)\b", line)
    if mm:
        took = float(mm.group(1)) * {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}[mm.group(2)]
    def read(name):
        try:
            return int(open(os.path.join(d, name)).read().strip())
        except (OSError, ValueError):
            return None
    node = lambda s: s["nodes"].get(0, {})
    devices = int(m(node(settled), "herald_cluster_view_devices"))
    rss_empty, rss_ready, rss_settled = (node(s).get("rss_kib") for s in (empty, ready, settled))
    topic_bytes = read("topic-bytes")
    rx = m(node(settled), VIEW_RX)
    results["fill"] = {
        "devices": devices, "machine": machine(d), "disturbed_samples": disturbed(d, "empty", "settled"), "replay_s": took, "ready_line": line,
        "rss_empty_kib": rss_empty, "rss_ready_kib": rss_ready, "rss_settled_kib": rss_settled,
        "view_bytes_per_device": ((max(rss_ready or 0, rss_settled or 0) - (rss_empty or 0)) * 1024 / devices) if devices else None,
        "topic_bytes_on_disk": topic_bytes, "topic_partitions": read("topic-partitions"),
        "topic_bytes_per_record": topic_bytes / devices if topic_bytes and devices else None,
        "view_rx_bytes": rx, "view_rx_bytes_per_record": rx / devices if devices else None,
        "fill_output": open(os.path.join(d, "fill.out")).read().strip() if os.path.exists(os.path.join(d, "fill.out")) else None,
    }

path = os.path.join(out, "results.json")
json.dump(results, open(path, "w"), indent=2)
shutil.copy(path, os.path.join(os.path.dirname(out), "results.json"))

def fmt(x, spec=",.0f"):
    return "–" if x is None else format(x, spec)

print(f"run {run['run']} ({run['commit']}), {run['machine']}, {run['date']}")
print("(rows marked * had another benchmark or a compiler running during the measurement: see monitor.log)\n")
star = lambda x: "*" if x.get("disturbed_samples") else ""
if results["sessions"]:
    print("| nodes | sessions held | per node: sessions, RSS before → held, bytes per session (view devices) | connects/s | presence records written (connect) | presence bytes read per record per node | storm: all back | reconnect p50 / p99 / max | failed | presence records (storm) | views settled | accept-queue overflows (connect / storm) |")
    print("|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for s in results["sessions"]:
        per = "; ".join(
            f"{x['sessions']:,}, {x['rss_before_kib'] / 1024:.1f} → {x['rss_held_kib'] / 1024:.1f} MiB, {fmt(x['bytes_per_session'])} B ({x['view_devices']:,})"
            for x in s["per_node"])
        rec = [r for r in s["storm_reconnect_ms"] if r]
        recs = (f"{max(r['p50'] for r in rec):.0f} / {max(r['p99'] for r in rec):.0f} / {max(r['max'] for r in rec):.0f} ms" if rec else "–")
        print(f"| {s['nodes']}{star(s)} | {s['sessions']:,} | {per} | {fmt(s['connects_per_sec'])} | {fmt(s['presence_written_connect'])} "
              f"| {fmt(s['view_rx_bytes_per_record_connect'], '.0f')} B | {fmt(s['storm_all_back_s'], '.1f')} s | {recs} | {s['storm_reconnect_failed']} "
              f"| {fmt(s['presence_written_storm'])} ({fmt(s['view_rx_bytes_per_record_storm'], '.0f')} B read per record per node) | {fmt(s['storm_view_settled_s'] if s['nodes'] > 1 else None, '.1f')} s | {fmt(s['listen_overflows_connect'])} / {fmt(s['listen_overflows_storm'])} |")
    print()
if results["downlink"]:
    print("| nodes | round | commands produced / delivered / lost / dup | settled by outcome | forwards ok (retried; one hop each would be) | f ((N-1)/N) | Kafka records written / read per command | delivery p50 / p99 / p99.9 / max | receipt latency local: n, mean, p50 / p90 / p99 | forwarded: n, mean, p50 / p90 / p99 |")
    print("|---|---:|---|---|---:|---|---|---|---|---|")
    def route(x, key):
        r = x["receipt_latency_ms_by_route"].get(key)
        return f"{r['count']:,}, {r['mean']:.1f}, {r['p50']} / {r['p90']} / {r['p99']} ms" if r else "–"
    for x in results["downlink"]:
        lat = x["latency_ms"]
        lats = f"{lat['p50']:.1f} / {lat['p99']:.1f} / {lat['p999']:.1f} / {lat['max']:.0f} ms" if lat else "–"
        oc = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(x["settled_by_outcome"].items()))
        print(f"| {x['nodes']}{star(x)} | {x['round']} | {fmt(x['produced'])} / {fmt(x['delivered'])} / {fmt(x['lost'])} / {fmt(x['duplicated'])} | {oc} "
              f"| {fmt(x['forwards_ok'])} ({fmt(x['forwards_retried'])}; {fmt(x['one_hop_forwards'])}) | {fmt(x['f'], '.3f')} ({x['expected_f']:.3f}) "
              f"| {fmt(x['records_written_per_command'], '.2f')} / {fmt(x['records_read_per_command'], '.2f')} | {lats} "
              f"| {route(x, 'local')} | {route(x, 'forwarded')} |")
    print()
if results["kill"]:
    print("| nodes | terminals | back on survivors | dead node's inbox adopted | reconnect p50 / p99 / max | presence records written | presence bytes read per survivor | produced / delivered / lost / dup | delivery p50 / p99 / max | adopted inboxes at end |")
    print("|---|---:|---:|---:|---|---:|---|---|---|---|")
    lat = lambda l: f"{l['p50']:.0f} / {l['p99']:.0f} / {l['max']:.0f} ms" if l else "–"
    for x in results["kill"]:
        r = x["reconnect_ms"]
        rs = f"{r['p50']:.0f} / {r['p99']:.0f} / {r['max']:.0f} ms" if r else "–"
        print(f"| {x['nodes']}{star(x)} | {fmt(x['terminals'])} | {fmt(x['back_on_survivors_s'], '.1f')} s | {fmt(x['inbox_adopted_s'], '.1f')} s | {rs} "
              f"| {fmt(x['presence_written'])} | {', '.join(fmt(b) for b in x['presence_view_rx_bytes_per_survivor'])} "
              f"| {fmt(x['produced'])} / {fmt(x['delivered'])} / {fmt(x['lost'])} / {fmt(x['duplicated'])} "
              f"| {lat(x['latency_ms'])} | {x['adopted_inboxes']} |")
    print()
if results["fill"]:
    x = results["fill"]
    print("| devices in the view | replay took | RSS empty → ready + 3 s → + 8 s | view bytes per device | topic on disk (partitions) | per record | presence-view bytes read per record |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    print(f"| {x['devices']:,}{star(x)} | {fmt(x['replay_s'], '.2f')} s | {fmt((x['rss_empty_kib'] or 0) / 1024, '.1f')} → {fmt((x['rss_ready_kib'] or 0) / 1024, '.1f')} → {fmt((x['rss_settled_kib'] or 0) / 1024, '.1f')} MiB "
          f"| {fmt(x['view_bytes_per_device'])} B | {fmt(x['topic_bytes_on_disk'])} B ({x['topic_partitions']}) | {fmt(x['topic_bytes_per_record'], '.0f')} B | {fmt(x['view_rx_bytes_per_record'], '.0f')} B |")
print(f"\nresults: {path}")
PY
