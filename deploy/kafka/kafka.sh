#!/usr/bin/env bash
# kafka.sh - Herald's local Apache Kafka for development and integration tests.
#
# Runs a real single-node Kafka 4.x in KRaft mode (one JVM acting as broker and controller),
# listening on 127.0.0.1 only. No Docker and no release tarball: the broker's jars are fetched
# once from Maven Central with Maven (deploy/kafka/pom.xml) into a cache directory and run with
# plain `java -cp`. Several instances can run at once if they use different ports and dirs.
#
# Usage: deploy/kafka/kafka.sh COMMAND [ARGS...]
#   install                        fetch the jars into the cache (once; later calls do nothing)
#   start | ensure                 make sure this instance runs and serves: install if needed,
#                                  write server.properties, format the storage on first use,
#                                  start the broker in the background and wait until it answers
#                                  a metadata request. Prints the bootstrap address (the only
#                                  thing written to stdout). Does nothing if it already serves.
#   stop                           SIGTERM, wait for a clean exit (SIGKILL after the timeout)
#   kill                           SIGKILL at once (for fault tests); data stays for a restart
#   restart                        stop, then start
#   status                         exit 0: serving, 1: running but not serving, 3: not running
#   logs [TAIL ARGS]               tail the broker log (default: last 100 lines; e.g. `logs -f`)
#   console-consumer TOPIC [ARGS]  org.apache.kafka.tools.consumer.ConsoleConsumer on TOPIC
#                                  (e.g. --from-beginning --max-messages 1 --timeout-ms 10000)
#   console-producer TOPIC [ARGS]  org.apache.kafka.tools.ConsoleProducer: one record per stdin line
#   topics ARGS                    org.apache.kafka.tools.TopicCommand (e.g. --list, --create ...)
#   run CLASS [ARGS]               any main class on the Kafka classpath (tools logging setup)
#   env                            print this instance's settings as shell assignments
#   destroy                        stop the instance and delete its directory (data included)
# The tool commands (console-*, topics) get --bootstrap-server preset to this instance.
#
# Environment (all optional):
#   KAFKA_PORT             client port (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT+10000, or -10000 above 55535)
#   KAFKA_DIR              instance dir: server.properties, data/, logs/, kafka.pid
#                          (default ${TMPDIR:-/tmp}/herald-kafka-$KAFKA_PORT)
#   KAFKA_VERSION          Kafka version to fetch and run (default 4.1.1; needs Java 17+)
#   HERALD_KAFKA_HOME      jar cache (default $HOME/.cache/herald/kafka-$KAFKA_VERSION; jars in libs/)
#   KAFKA_START_TIMEOUT    seconds `start` waits for the broker to serve (default 90)
#   KAFKA_STOP_TIMEOUT     seconds `stop` waits before SIGKILL (default 30)
#   KAFKA_HEAP_OPTS        broker heap (default "-Xmx1g -Xms256m")
#   KAFKA_JVM_OPTS         extra broker JVM options
#   KAFKA_TOOLS_OPTS       extra JVM options for the command-line tools
#   KAFKA_LOG_LEVEL        broker root log level (default WARN)
#   KAFKA_CDS              1 (default): use/make a class-data-sharing archive for faster starts
#   KAFKA_EXTRA_PROPS      extra server.properties lines (newline separated), appended last
#   JAVA_HOME              Java 17+ to use (default: `java` on PATH)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
HERALD_KAFKA_HOME=${HERALD_KAFKA_HOME:-$HOME/.cache/herald/kafka-$KAFKA_VERSION}
LIBS=$HERALD_KAFKA_HOME/libs

KAFKA_PORT=${KAFKA_PORT:-9092}
if [[ -z ${KAFKA_CONTROLLER_PORT:-} ]]; then
  if ((KAFKA_PORT + 10000 <= 65535)); then
    KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 10000))
  else
    KAFKA_CONTROLLER_PORT=$((KAFKA_PORT - 10000))
  fi
fi
KAFKA_DIR=${KAFKA_DIR:-${TMPDIR:-/tmp}/herald-kafka-$KAFKA_PORT}
KAFKA_HOST=127.0.0.1
BOOTSTRAP=$KAFKA_HOST:$KAFKA_PORT
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1g -Xms256m}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:-}
KAFKA_LOG_LEVEL=${KAFKA_LOG_LEVEL:-WARN}
KAFKA_EXTRA_PROPS=${KAFKA_EXTRA_PROPS:-}
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

log() { echo "kafka.sh [$KAFKA_PORT]: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $KAFKA_PORT =~ ^[0-9]+$ && $KAFKA_CONTROLLER_PORT =~ ^[0-9]+$ ]] ||
  die "KAFKA_PORT/KAFKA_CONTROLLER_PORT must be numbers"
((KAFKA_PORT != KAFKA_CONTROLLER_PORT)) || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT are equal"

# Instance files, all below KAFKA_DIR (made absolute once it exists).
set_paths() {
  PROPS=$KAFKA_DIR/server.properties
  DATA_DIR=$KAFKA_DIR/data
  LOG_DIR=$KAFKA_DIR/logs
  PID_FILE=$KAFKA_DIR/kafka.pid
  SERVER_LOG=$LOG_DIR/server.log
  OUT_LOG=$LOG_DIR/kafka.out # the JVM's own stdout/stderr (crashes, log4j status messages)
}
make_instance_dir() {
  mkdir -p "$KAFKA_DIR"
  KAFKA_DIR=$(cd "$KAFKA_DIR" && pwd)
  set_paths
  mkdir -p "$DATA_DIR" "$LOG_DIR"
}
if [[ -d $KAFKA_DIR ]]; then KAFKA_DIR=$(cd "$KAFKA_DIR" && pwd); fi
set_paths

# --- Java and the jar cache --------------------------------------------------------------------

# Check for Java 17+ and set JAVA_BUILD to the exact JVM build (e.g. 17.0.15+6-Debian-1deb12u1).
check_java() {
  local out v
  command -v "$JAVA" >/dev/null || die "java not found (install a Java 17+ JDK or set JAVA_HOME)"
  out=$("$JAVA" -version 2>&1)
  v=$(sed -n -E '1s/.*version "([0-9]+)[."].*/\1/p' <<<"$out")
  [[ $v =~ ^[0-9]+$ ]] || die "cannot tell the version of $JAVA"
  ((v >= 17)) || die "Kafka $KAFKA_VERSION needs Java 17+, $JAVA is Java $v (set JAVA_HOME)"
  JAVA_BUILD=$(sed -n -E '2s/.*\(build ([^)]*)\).*/\1/p' <<<"$out" | tr -c 'A-Za-z0-9._+\n-' '_')
  JAVA_BUILD=${JAVA_BUILD:-$v}
}

# Fetch the classpath into $LIBS once. The marker file .complete is written last, and the jars
# are copied into a temporary dir that is renamed into place, so an interrupted fetch is redone
# and concurrent callers (serialised by a lock) never see a half-filled dir.
install() {
  [[ -f $LIBS/.complete ]] && return 0
  command -v mvn >/dev/null || die "mvn not found: Maven is needed once to fetch the Kafka jars"
  mkdir -p "$HERALD_KAFKA_HOME"
  local lock tmp
  exec {lock}>"$HERALD_KAFKA_HOME/.install.lock"
  flock "$lock"
  if [[ ! -f $LIBS/.complete ]]; then
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
    tmp=$(mktemp -d "$HERALD_KAFKA_HOME/libs.tmp.XXXXXX")
    # Maven's output is kept aside and shown only on failure (-q still emits colour codes).
    if ! mvn -B -q -f "$SCRIPT_DIR/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
      >"$tmp.log" 2>&1; then
      cat "$tmp.log" >&2
      rm -rf "$tmp" "$tmp.log"
      die "mvn could not fetch the Kafka $KAFKA_VERSION jars"
    fi
    rm -f "$tmp.log"
    ls "$tmp"/kafka_2.13-*.jar "$tmp"/kafka-tools-*.jar >/dev/null 2>&1 || {
      rm -rf "$tmp"
      die "mvn ran but the Kafka jars are missing"
    }
    touch "$tmp/.complete"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    log "installed $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1))"
  fi
  exec {lock}>&-
}

# Run a Kafka command-line tool in the foreground, logging warnings to stderr only.
# Tuned for a quick JVM start rather than peak throughput.
run_tool() {
  check_java
  install
  cds_use
  # shellcheck disable=SC2086 # KAFKA_TOOLS_OPTS is a word list
  exec "$JAVA" -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "${CDS_OPTS[@]}" -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPT_DIR/tools-log4j2.xml" ${KAFKA_TOOLS_OPTS:-} \
    -cp "$LIBS/*" "$@"
}

# --- The broker process ------------------------------------------------------------------------

# Print the pid of this instance's broker if it is alive. The pid file alone is not trusted
# (stale after a kill, pid reuse): the process must be a JVM started with this instance's
# server.properties. A zombie has an empty cmdline and counts as gone.
broker_pid() {
  local pid
  { read -r pid <"$PID_FILE"; } 2>/dev/null || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$PROPS" || return 1
  echo "$pid"
}

# True while process $1 exists and is not a zombie. Unlike broker_pid this does not look at the
# command line, which right after the fork still shows kafka.sh until the exec of java.
alive() {
  local stat
  # (read, not $(<file): a failed $(<file) ends the whole script under set -e)
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) } # drop "pid (comm) ", comm may contain spaces
  [[ ${stat%% *} != Z ]]
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/$KAFKA_HOST/$1") 2>/dev/null; }

# True if the broker answers a Metadata request listing at least one (i.e. an unfenced) broker.
# A bound port is not enough: Kafka binds early and only processes requests once it caught up
# with the metadata log and was unfenced. A raw Metadata v4 request from Python costs a few
# milliseconds, a JVM-based tool a second or more, so the JVM is only the fallback.
# The system python3 is preferred: wrappers such as pyenv shims cost ~0.1 s per call.
serving() {
  local py
  py=$(command -v /usr/bin/python3 || command -v python3 || true)
  port_open "$KAFKA_PORT" || return 1
  if [[ -n $py ]]; then
    "$py" - "$KAFKA_HOST" "$KAFKA_PORT" <<'PY' 2>/dev/null
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
def recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf
try:
    with socket.create_connection((host, port), timeout=1) as s:
        s.settimeout(2)
        client = b"herald-kafka-probe"
        # Request header v1 (api_key=3 Metadata, version 4, correlation id 7, client id),
        # body: topics = empty array (no topic data wanted), allow_auto_topic_creation = false.
        req = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", 0, 0)
        s.sendall(struct.pack(">i", len(req)) + req)
        size = struct.unpack(">i", recv(s, 4))[0]
        corr, _throttle, brokers = struct.unpack(">iii", recv(s, min(size, 12)))
        sys.exit(0 if corr == 7 and brokers >= 1 else 1)
except Exception:
    sys.exit(1)
PY
  else
    (KAFKA_TOOLS_OPTS='' timeout 20 "$0" run org.apache.kafka.tools.BrokerApiVersionsCommand \
      --bootstrap-server "$BOOTSTRAP" >/dev/null 2>&1)
  fi
}

# Class Data Sharing: an AppCDS archive of the broker's classes cuts JVM start-up (class
# loading and verification) by about 40% (3.2 s -> 1.9 s to serving here). It is made on the
# fly: while there is no archive for this Kafka version + JVM build, the broker runs with
# -XX:ArchiveClassesAtExit, the JVM writes the archive when it exits, and a clean `stop` moves
# it into the cache (that one stop takes ~2-3 s longer). After `kill`, or a stop that needed
# SIGKILL, the partial file is dropped and the next run tries again. KAFKA_CDS=0 turns it off.
# A stale or foreign archive is harmless: the JVM then just starts without it.
# The short-lived JVMs (StorageTool, console tools) use the archive too when it exists.
CDS_OPTS=()
cds_archive() { echo "$HERALD_KAFKA_HOME/cds/kafka-$KAFKA_VERSION-java-$JAVA_BUILD.jsa"; }
# Set CDS_OPTS to use the archive if there is one (for tools: they never make one).
cds_use() {
  CDS_OPTS=()
  [[ ${KAFKA_CDS:-1} != 0 ]] || return 0
  local archive
  archive=$(cds_archive)
  # -Xlog: CDS reports harmless "Skipping class ..." warnings on stdout; keep them out.
  [[ ! -s $archive ]] || CDS_OPTS=(-XX:SharedArchiveFile="$archive" "-Xlog:cds*=off")
}
# Set CDS_OPTS for the broker: use the archive, or have this run make it.
cds_setup() {
  cds_use
  [[ ${KAFKA_CDS:-1} != 0 ]] || return 0
  local archive
  archive=$(cds_archive)
  if [[ -s $archive ]]; then
    rm -f "$KAFKA_DIR/cds.pending"
  else
    mkdir -p "${archive%/*}"
    local tmp=$archive.tmp-$KAFKA_PORT # one live broker per port: no two JVMs share it
    rm -f "$tmp"
    CDS_OPTS=(-XX:ArchiveClassesAtExit="$tmp" "-Xlog:cds*=off")
    printf '%s\n%s\n' "$tmp" "$archive" >"$KAFKA_DIR/cds.pending"
  fi
}
# After the broker exited: keep the archive it wrote if the exit was clean ($1 = yes/no).
cds_finish() {
  local pending=$KAFKA_DIR/cds.pending tmp archive
  [[ -f $pending ]] || return 0
  { read -r tmp && read -r archive; } <"$pending" || true
  rm -f "$pending"
  if [[ $1 == yes && -n $tmp && -s $tmp && -n $archive && ! -s $archive ]]; then
    mv -f "$tmp" "$archive" && log "saved class-data archive $archive (faster starts from now on)"
  else
    rm -f "$tmp"
  fi
}

write_properties() {
  # Regenerated on every start from the environment; data/ is what carries state.
  cat >"$PROPS" <<EOF
# Generated by deploy/kafka/kafka.sh for Herald's tests; rewritten on every start.
# Single node, KRaft: this JVM is broker and (sole) controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR

# Topics: auto-created on first use, 3 partitions, one replica.
auto.create.topics.enable=true
num.partitions=3
default.replication.factor=1
min.insync.replicas=1

# Internal topics on one node: replication factor 1 and few partitions (created faster).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Fast start for tests: no delay before the first consumer-group rebalance, quicker
# broker heartbeats so the controller unfences the broker sooner.
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=500
# After a SIGKILL the restarted controller still counts the dead incarnation as alive and
# rejects the new one (DUPLICATE_BROKER_REGISTRATION) until this session timeout ends:
# 3 s instead of 9 s makes restart-after-kill take ~5 s instead of ~11 s.
broker.session.timeout.ms=3000
EOF
  [[ -z $KAFKA_EXTRA_PROPS ]] || printf '\n# KAFKA_EXTRA_PROPS\n%s\n' "$KAFKA_EXTRA_PROPS" >>"$PROPS"
}

# Format the KRaft storage once (data/meta.properties marks it). Static quorum
# (controller.quorum.voters) + a fresh random cluster id: works on every 4.x release.
format_storage() {
  [[ -f $DATA_DIR/meta.properties ]] && return 0
  local id
  # A Kafka Uuid is 16 random bytes in URL-safe base64 without padding (22 chars); the CLI
  # would take a leading '-' for an option, so draw again in that (rare) case.
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $id != -* ]] && break
  done
  log "formatting KRaft storage in $DATA_DIR (cluster id $id)"
  cds_use
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "${CDS_OPTS[@]}" \
    -Dlog4j2.configurationFile="$SCRIPT_DIR/tools-log4j2.xml" -cp "$LIBS/*" \
    kafka.tools.StorageTool format --config "$PROPS" --cluster-id "$id" >>"$OUT_LOG" 2>&1 ||
    { tail -n 20 "$OUT_LOG" >&2; die "formatting the storage failed (see $OUT_LOG)"; }
}

# Wait until the broker (pid $1) serves; fail early if it dies.
wait_serving() {
  local pid=$1 deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until serving; do
    if ! alive "$pid"; then
      log "the broker (pid $pid) exited during startup; last lines of its logs:"
      tail -n 30 "$OUT_LOG" "$SERVER_LOG" >&2 2>/dev/null || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "the broker (pid $pid) does not serve after ${KAFKA_START_TIMEOUT}s (see $SERVER_LOG)"
      return 1
    fi
    sleep 0.1
  done
}

start() {
  local pid lock t0 ms
  check_java
  install
  make_instance_dir
  # One start/stop at a time per instance (e.g. tests calling `ensure` concurrently).
  exec {lock}>"$KAFKA_DIR/.lock"
  flock "$lock"

  if pid=$(broker_pid); then
    wait_serving "$pid" || die "instance in $KAFKA_DIR runs (pid $pid) but does not serve"
    log "already running (pid $pid), serving on $BOOTSTRAP"
    echo "$BOOTSTRAP"
    return 0
  fi
  rm -f "$PID_FILE"
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    ! port_open "$p" || die "port $p on $KAFKA_HOST is taken by another process (another instance? set KAFKA_PORT/KAFKA_CONTROLLER_PORT)"
  done

  t0=$(date +%s%N)
  write_properties
  format_storage
  echo "=== $(date -Is) starting Kafka $KAFKA_VERSION" >>"$OUT_LOG"
  cds_setup
  # Detached: own session (setsid), so signals for the caller's terminal or process group
  # don't reach it; stdin/stdout/stderr and every other inherited fd (our lock, a caller's
  # pipes) closed or redirected, so no caller waits for EOF while the broker runs and the
  # lock is released when we return. The subshell execs into java: $! is the broker's pid.
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    # shellcheck disable=SC2086 # the *_OPTS are word lists
    exec setsid nohup "$JAVA" $KAFKA_HEAP_OPTS "${CDS_OPTS[@]}" \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$SCRIPT_DIR/log4j2.xml" -Dkafka.logs.dir="$LOG_DIR" \
      -Dherald.kafka.log.level="$KAFKA_LOG_LEVEL" \
      $KAFKA_JVM_OPTS \
      -cp "$LIBS/*" kafka.Kafka "$PROPS"
  ) </dev/null >>"$OUT_LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_FILE"
  log "started Kafka $KAFKA_VERSION (pid $pid, dir $KAFKA_DIR), waiting for it to serve"
  wait_serving "$pid" || die "start failed"
  ms=$((($(date +%s%N) - t0) / 1000000))
  log "serving on $BOOTSTRAP after $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
  echo "$BOOTSTRAP"
}

# Stop the broker with signal $1, waiting up to $2 seconds (SIGKILL after that).
stop_with() {
  local sig=$1 timeout=$2 pid lock deadline
  [[ -d $KAFKA_DIR ]] || { log "not running (no $KAFKA_DIR)"; return 0; }
  exec {lock}>"$KAFKA_DIR/.lock"
  flock "$lock"
  if ! pid=$(broker_pid); then
    log "not running"
    rm -f "$PID_FILE"
    cds_finish no
    return 0
  fi
  local clean=yes
  [[ $sig == TERM ]] || clean=no
  log "sending SIG$sig to pid $pid"
  kill -s "$sig" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while broker_pid >/dev/null; do
    if ((SECONDS >= deadline)) && [[ $sig != KILL ]]; then
      log "still running after ${timeout}s, sending SIGKILL"
      sig=KILL clean=no
      kill -s KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
    elif ((SECONDS >= deadline)); then
      die "pid $pid survived SIGKILL"
    fi
    sleep 0.1
  done
  rm -f "$PID_FILE"
  cds_finish "$clean"
  log "stopped"
}

status() {
  local pid
  if ! pid=$(broker_pid); then
    echo "stopped (dir $KAFKA_DIR)"
    return 3
  elif serving; then
    echo "serving on $BOOTSTRAP (pid $pid, dir $KAFKA_DIR)"
  else
    echo "running but not serving on $BOOTSTRAP (pid $pid, dir $KAFKA_DIR)"
    return 1
  fi
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
install) check_java && install ;;
start | ensure) start ;;
stop) stop_with TERM "$KAFKA_STOP_TIMEOUT" ;;
kill) stop_with KILL 10 ;;
# stop_with keeps its lock until the shell exits: a subshell releases it for start.
restart) (stop_with TERM "$KAFKA_STOP_TIMEOUT") && start ;;
status) status ;;
logs)
  [[ -f $SERVER_LOG ]] || die "no log at $SERVER_LOG"
  if [[ $# -eq 0 ]]; then set -- -n 100; fi
  exec tail "$@" "$SERVER_LOG"
  ;;
console-consumer)
  [[ $# -ge 1 ]] || die "usage: kafka.sh console-consumer TOPIC [ARGS...]"
  topic=$1 && shift
  run_tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$BOOTSTRAP" --topic "$topic" "$@"
  ;;
console-producer)
  [[ $# -ge 1 ]] || die "usage: kafka.sh console-producer TOPIC [ARGS...]"
  topic=$1 && shift
  run_tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BOOTSTRAP" --topic "$topic" "$@"
  ;;
topics) run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@" ;;
run)
  [[ $# -ge 1 ]] || die "usage: kafka.sh run CLASS [ARGS...]"
  run_tool "$@"
  ;;
env)
  printf 'KAFKA_VERSION=%q\nKAFKA_PORT=%q\nKAFKA_CONTROLLER_PORT=%q\nKAFKA_DIR=%q\nKAFKA_BOOTSTRAP=%q\nHERALD_KAFKA_HOME=%q\n' \
    "$KAFKA_VERSION" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_DIR" "$BOOTSTRAP" "$HERALD_KAFKA_HOME"
  ;;
destroy)
  stop_with TERM "$KAFKA_STOP_TIMEOUT"
  rm -rf "$KAFKA_DIR"
  log "removed $KAFKA_DIR"
  ;;
-h | --help | help) usage ;;
*)
  usage >&2
  exit 2
  ;;
esac
