#!/usr/bin/env bash
# Several Herald nodes on this machine, on the one local Kafka: a node group to
# load-test as if behind a load balancer (herald-loadtest -h host:port,host:port,...).
# Each node runs `herald --config deploy/herald.dev.toml run` (the development
# fleet key, as scripts/dev.sh) with its own ports and node id set through the
# environment overrides:
#   node I: MQTT 127.0.0.1:(1884+I), HTTP 127.0.0.1:(9101+I), kafka.cluster.node_id "herald-I"
# (scripts/dev.sh uses 1883, 9090 and 9191-9193; benches/faults.sh 21885 and 29095.)
#
# Usage: scripts/cluster.sh COMMAND
#   start [N]   start nodes 0..N-1 (default 3), and the local Kafka first
#               (deploy/kafka/kafka.sh start) if it is not running; wait until every
#               node's /readyz answers 200; print the -h list on stdout (the only
#               output there). Running nodes are left alone. Builds herald if missing.
#   stop [I]    SIGTERM every node (or node I) and wait while they drain
#               (SIGKILL after HERALD_CLUSTER_STOP_TIMEOUT)
#   status      each node's pid, ports and /readyz; exit 1 unless all are ready
#   kill I      SIGKILL node I (a node dying)
#   restart I   stop node I if it runs, start it again and wait until it is ready
#   hosts       print the -h list
#
# Environment (all optional; `start` saves the first four for the other commands):
#   HERALD_PROFILE                release (default) or debug: runs target/<profile>/herald
#   HERALD_CLUSTER_CONFIG         base config of every node (default deploy/herald.dev.toml)
#   HERALD_CLUSTER_MQTT_PORT      MQTT port of node 0; node I has it + I (default 1884)
#   HERALD_CLUSTER_HTTP_PORT      HTTP port of node 0; node I has it + I (default 9101)
#   HERALD_CLUSTER_DIR            settings, pid files and logs herald-I.log (default target/cluster)
#   HERALD_CLUSTER_START_TIMEOUT  seconds to wait for readiness (default 90)
#   HERALD_CLUSTER_STOP_TIMEOUT   seconds to wait for a drained exit (default 60)
#   HERALD_<SECTION>__<KEY>       reach every node as any Herald setting does, e.g.
#                                 HERALD_KAFKA__CLUSTER__SESSION_TIMEOUT=10s
set -euo pipefail
# Paths given in the environment are relative to where this runs; the defaults to the repository.
[[ -z ${HERALD_CLUSTER_DIR:-} ]] || HERALD_CLUSTER_DIR=$(realpath -m -- "$HERALD_CLUSTER_DIR")
[[ -z ${HERALD_CLUSTER_CONFIG:-} ]] || HERALD_CLUSTER_CONFIG=$(realpath -m -- "$HERALD_CLUSTER_CONFIG")
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STATE=${HERALD_CLUSTER_DIR:-$PWD/target/cluster}
SETTINGS=$STATE/cluster.env
HOST=127.0.0.1
START_TIMEOUT=${HERALD_CLUSTER_START_TIMEOUT:-90}
STOP_TIMEOUT=${HERALD_CLUSTER_STOP_TIMEOUT:-60}

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

# --- Settings: from the environment for `start`, saved in $SETTINGS for the rest ----------

settings_from_environment() { # [N]
  NODES=${1:-3}
  PROFILE=${HERALD_PROFILE:-release}
  CONFIG=${HERALD_CLUSTER_CONFIG:-deploy/herald.dev.toml}
  MQTT_PORT=${HERALD_CLUSTER_MQTT_PORT:-1884}
  HTTP_PORT=${HERALD_CLUSTER_HTTP_PORT:-9101}
  check_settings
}
check_settings() {
  [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "N is a number of nodes from 1 (got '$NODES')"
  [[ $PROFILE == release || $PROFILE == debug ]] || die "HERALD_PROFILE must be release or debug"
  [[ $MQTT_PORT =~ ^[0-9]+$ && $HTTP_PORT =~ ^[0-9]+$ ]] || die "the base ports must be numbers"
  BIN=target/$PROFILE/herald
}
save_settings() {
  mkdir -p "$STATE"
  printf 'NODES=%q\nPROFILE=%q\nCONFIG=%q\nMQTT_PORT=%q\nHTTP_PORT=%q\n' \
    "$NODES" "$PROFILE" "$CONFIG" "$MQTT_PORT" "$HTTP_PORT" >"$SETTINGS"
}
need_cluster() { ((SAVED)) || die "no cluster started from $STATE (scripts/cluster.sh start [N])"; }

SAVED=0
if [[ -f $SETTINGS ]]; then
  # shellcheck source=/dev/null
  source "$SETTINGS"
  SAVED=1
  check_settings
else
  settings_from_environment
fi

# --- Nodes ---------------------------------------------------------------------------------

node_id() { echo "herald-$1"; }
mqtt_port() { echo $((MQTT_PORT + $1)); }
http_port() { echo $((HTTP_PORT + $1)); }
pid_file() { echo "$STATE/herald-$1.pid"; }
log_file() { echo "$STATE/herald-$1.log"; }
all_nodes() { seq 0 $((NODES - 1)); }

check_index() { # I
  [[ ${1:-} =~ ^[0-9]+$ ]] || die "a node index is a number from 0 (got '${1:-}')"
  (($1 < NODES)) || die "no node $1: the cluster has nodes 0..$((NODES - 1))"
}

# Node I's settings, as environment assignments for `env`. HERALD_CLUSTER_DIR is no
# Herald setting: it marks the process as this cluster's node (see node_pid).
node_environment() { # I
  NODE_ENV=(
    "HERALD_BROKER__LISTEN=$HOST:$(mqtt_port "$1")"
    "HERALD_HTTP__LISTEN=$HOST:$(http_port "$1")"
    "HERALD_KAFKA__CLUSTER__NODE_ID=$(node_id "$1")"
    "HERALD_CLUSTER_DIR=$STATE"
  )
}

# The pid of node I if it runs. The pid file alone is not trusted (stale after a kill,
# pid reuse): the process must carry this node's environment. A zombie has none left.
node_pid() { # I
  local pid environ
  { read -r pid <"$(pid_file "$1")"; } 2>/dev/null || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  environ=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ") || return 1
  grep -qxF "HERALD_KAFKA__CLUSTER__NODE_ID=$(node_id "$1")" <<<"$environ" || return 1
  grep -qxF "HERALD_CLUSTER_DIR=$STATE" <<<"$environ" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# "STATUS BODY" of node I's GET /readyz (e.g. "200 ready", "503 draining"); fails if
# nothing answers.
readiness() { # I
  local port
  port=$(http_port "$1")
  (
    exec 3<>"/dev/tcp/$HOST/$port" || exit 1
    printf 'GET /readyz HTTP/1.0\r\nHost: %s:%s\r\n\r\n' "$HOST" "$port" >&3
    read -r -t 2 _ status _ <&3 || exit 1
    while read -r -t 2 line <&3 && [[ -n ${line%$'\r'} ]]; do :; done
    read -r -t 2 body <&3 || true
    echo "$status ${body%$'\r'}"
  ) 2>/dev/null
}

ensure_binary() {
  [[ -x $BIN ]] && return 0
  say "building $BIN"
  if [[ $PROFILE == release ]]; then
    cargo build --locked --release --bin herald
  else
    cargo build --locked --bin herald
  fi
}

# Loads the configuration as node 0 would; on error shows Herald's message and stops.
check_config() {
  local out
  node_environment 0
  if ! out=$(env "${NODE_ENV[@]}" RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 \
    "$BIN" --config "$CONFIG" check-config 2>&1 >/dev/null); then
    say "$BIN rejects the configuration of node 0 ($CONFIG + environment):"
    echo "$out" >&2
    if grep -q 'kafka.cluster' <<<"$out"; then
      say "this $BIN predates kafka.cluster.node_id: rebuild it (cargo build --release --bin herald)"
    fi
    exit 1
  fi
}

# Fails unless node I runs or its ports are free.
check_ports() { # I
  local port
  ! node_pid "$1" >/dev/null || return 0
  for port in "$(mqtt_port "$1")" "$(http_port "$1")"; do
    ! port_open "$port" || die "port $port of $(node_id "$1") is in use by another process"
  done
}

start_node() { # I
  local i=$1 pid
  if pid=$(node_pid "$i"); then
    say "$(node_id "$i") already runs (pid $pid)"
    return 0
  fi
  check_ports "$i"
  rm -f "$(pid_file "$i")"
  node_environment "$i"
  # In a session of its own (no SIGINT from this terminal, no SIGHUP when it closes),
  # writing its own pid before it becomes herald.
  # shellcheck disable=SC2016 # expanded by the inner bash
  env "${NODE_ENV[@]}" setsid bash -c 'echo $$ >"$0" && exec "$@"' "$(pid_file "$i")" \
    "$BIN" --config "$CONFIG" run </dev/null >>"$(log_file "$i")" 2>&1 &
  for _ in $(seq 50); do
    if pid=$(node_pid "$i"); then
      say "$(node_id "$i") started (pid $pid): MQTT $HOST:$(mqtt_port "$i"), HTTP $HOST:$(http_port "$i"), log $(log_file "$i")"
      return 0
    fi
    sleep 0.1
  done
  die "$(node_id "$i") did not start; see $(log_file "$i")"
}

# Waits until /readyz of each given node answers 200.
wait_ready() { # I...
  local deadline=$((SECONDS + START_TIMEOUT)) i answer
  for i in "$@"; do
    until answer=$(readiness "$i") && [[ $answer == "200 "* ]]; do
      if ! node_pid "$i" >/dev/null; then
        say "$(node_id "$i") exited; the end of $(log_file "$i"):"
        tail -n 20 "$(log_file "$i")" >&2 || true
        exit 1
      fi
      ((SECONDS < deadline)) ||
        die "$(node_id "$i") not ready after $START_TIMEOUT s (/readyz: ${answer:-no answer}); see $(log_file "$i")"
      sleep 0.2
    done
    say "$(node_id "$i") ready"
  done
}

# SIGTERM the given nodes, then wait for each to exit (SIGKILL after the timeout).
stop_nodes() { # I...
  local i pid deadline=$((SECONDS + STOP_TIMEOUT)) stopping=()
  for i in "$@"; do
    if pid=$(node_pid "$i"); then
      kill -TERM "$pid" 2>/dev/null || true
      stopping+=("$i")
      say "$(node_id "$i") draining (pid $pid)"
    fi
  done
  for i in "${stopping[@]}"; do
    while pid=$(node_pid "$i"); do
      if ((SECONDS >= deadline)); then
        say "$(node_id "$i") still runs after $STOP_TIMEOUT s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.2
    done
    rm -f "$(pid_file "$i")"
    say "$(node_id "$i") stopped"
  done
}

hosts() {
  local i list=()
  for i in $(all_nodes); do list+=("$HOST:$(mqtt_port "$i")"); done
  local IFS=,
  echo "${list[*]}"
}

# --- Commands ------------------------------------------------------------------------------

cmd_start() { # [N]
  local i running=0 key
  if ((SAVED)); then
    for i in $(all_nodes); do
      if node_pid "$i" >/dev/null; then running=$((running + 1)); fi
    done
  fi
  if ((running)); then
    [[ -z ${1:-} || $1 == "$NODES" ]] ||
      die "a cluster of $NODES nodes runs ($running up): stop it before starting $1"
    say "a cluster of $NODES nodes runs ($running up); starting the others with its settings"
  else
    settings_from_environment "${1:-}"
  fi
  [[ -f $CONFIG ]] || die "no config file $CONFIG"
  ensure_binary
  check_config
  say "local Kafka on $(deploy/kafka/kafka.sh start)"
  for i in $(all_nodes); do check_ports "$i"; done
  save_settings
  SAVED=1
  for i in $(all_nodes); do start_node "$i"; done
  # shellcheck disable=SC2046 # node indices
  wait_ready $(all_nodes)
  key=$(sed -n 's/^fleet_key *= *"\(.*\)"/\1/p' "$CONFIG" | head -n 1)
  say "$NODES nodes ready. Load them as a load balancer would, e.g.:"
  say "  ${key:+HERALD_FLEET_KEY=$key }cargo run -q --release --bin herald-loadtest -- uplink -h $(hosts) -c 300 -r 300 -d 30 --move-on-reconnect"
  hosts
}

cmd_status() {
  local i pid answer ready=0
  need_cluster
  for i in $(all_nodes); do
    if pid=$(node_pid "$i"); then
      answer=$(readiness "$i") || answer="no answer"
      if [[ $answer == "200 "* ]]; then ready=$((ready + 1)); fi
      printf '%s  pid %-8s MQTT %s:%s  HTTP %s:%s  /readyz %s\n' "$(node_id "$i")" "$pid" \
        "$HOST" "$(mqtt_port "$i")" "$HOST" "$(http_port "$i")" "$answer"
    else
      printf '%s  not running   MQTT %s:%s  HTTP %s:%s  log %s\n' "$(node_id "$i")" \
        "$HOST" "$(mqtt_port "$i")" "$HOST" "$(http_port "$i")" "$(log_file "$i")"
    fi
  done
  echo "$ready of $NODES nodes ready; -h $(hosts)"
  ((ready == NODES))
}

cmd_kill() { # I
  local pid
  need_cluster
  check_index "${1:-}"
  pid=$(node_pid "$1") || die "$(node_id "$1") is not running"
  kill -KILL "$pid"
  rm -f "$(pid_file "$1")"
  say "$(node_id "$1") killed (SIGKILL, pid $pid)"
}

cmd_restart() { # I
  need_cluster
  check_index "${1:-}"
  stop_nodes "$1"
  ensure_binary
  start_node "$1"
  wait_ready "$1"
}

case ${1:-} in
  start) cmd_start "${2:-}" ;;
  stop)
    ((SAVED)) || { say "no cluster started from $STATE"; exit 0; }
    if [[ -n ${2:-} ]]; then
      check_index "$2"
      stop_nodes "$2"
    else
      # shellcheck disable=SC2046 # node indices
      stop_nodes $(all_nodes)
    fi
    ;;
  status) cmd_status ;;
  kill) cmd_kill "${2:-}" ;;
  restart) cmd_restart "${2:-}" ;;
  hosts) need_cluster && hosts ;;
  *) usage ;;
esac
