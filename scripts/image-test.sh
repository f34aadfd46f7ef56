#!/usr/bin/env bash
# image-test.sh - tests Herald's container image (scripts/image.sh) against the local Kafka.
#
# Builds the image (or takes an existing one), starts the local Kafka (deploy/kafka/kafka.sh,
# 127.0.0.1:9092), and runs `herald run` in a container as Kubernetes would, with podman:
# `--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 --network host`, the
# image's own entrypoint (tini) and command, and a config file mounted at
# /etc/herald/herald.toml; hardened as the Helm chart runs it (read-only root filesystem, no
# capabilities, no privilege escalation). The config: device auth with a fleet key made by the
# image's `herald fleet-key`, MQTT on 127.0.0.1:21983, HTTP on 127.0.0.1:29190, Kafka topics of
# its own (herald.imagetest.<run>.*, deleted at the end). Checks, in order:
#   1. `herald --version` (and herald-consumers, herald-loadtest) print the image tag's version
#   2. the container runs as uid 10001 with tini as PID 1, herald its child
#   3. /healthz and /readyz answer 200 (readyz: listener up, Kafka reachable, presence replayed)
#   4. an MQTT 5 connect with the device's credentials and a QoS 1 uplink (mosquitto_pub):
#      CONNACK 0, PUBACK 0
#   5. that uplink is in Kafka: key = device id, value = the published payload
#   6. /metrics has herald_build_info with version="<the tag's version>"
#   7. `podman stop` (SIGTERM, forwarded by tini) while a second device is connected: the drain
#      closes that connection and the container exits with code 0 within the drain's bound
#      (drain_period 5 s + shutdown_grace 5 s + the Kafka flush)
# The container is removed on exit, pass or fail. Exit code 0 when every check passed.
#
# Usage: scripts/image-test.sh [--reuse | --image IMAGE] [-- IMAGE.SH ARGS...]
#   (none)         build the image with scripts/image.sh (HERALD_ENV, BUILD_NUMBER apply)
#   --reuse        test the image scripts/image.sh built last (.herald/image.tag); build if none
#   --image IMAGE  test IMAGE (e.g. herald:4ae5fd4c1d2e-dev-1234)
# Environment: HERALD_IMAGE_TEST_MQTT_PORT (21983), HERALD_IMAGE_TEST_HTTP_PORT (29190),
#   HERALD_IMAGE_TEST_KEEP=1 keeps the work dir (config, logs) for a look afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MQTT_PORT=${HERALD_IMAGE_TEST_MQTT_PORT:-21983}
HTTP_PORT=${HERALD_IMAGE_TEST_HTTP_PORT:-29190}
RUN_ID=$(date -u +%Y%m%d%H%M%S)-$$
NAME=herald-image-test-$$
TOPICS=herald.imagetest.$RUN_ID
DEVICE="image-test-0001"
WATCHER="image-test-0002"
PODMAN_RUN=(podman run --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 --network host)

# Root's podman, where scripts/image.sh put the image (it uses sudo when not root).
if [[ $(id -u) != 0 ]]; then
  # shellcheck disable=SC2032,SC2033 # sudo runs the podman binary, not this function
  podman() { sudo podman "$@"; }
fi

say() { echo "image-test: $*" >&2; }
pass() { say "PASS $*"; }
fail() {
  say "FAIL $*"
  if podman container exists "$NAME" 2>/dev/null; then
    say "last lines of the container's log:"
    podman logs --tail 40 "$NAME" >&2 2>&1 || true
  fi
  exit 1
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
mode=build image=
while (($#)); do
  case $1 in
  --reuse) mode=reuse ;;
  --image)
    [[ $# -ge 2 ]] || { usage >&2; exit 2; }
    mode=given image=$2
    shift
    ;;
  -h | --help) usage; exit 0 ;;
  --) shift; break ;;
  *) usage >&2; exit 2 ;;
  esac
  shift
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-image-test.XXXXXX")
watcher_pid=
cleanup() {
  local rc=$?
  [[ -z $watcher_pid ]] || kill "$watcher_pid" 2>/dev/null || true
  podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  if [[ -f $WORK/topics-created ]]; then
    # This run's topics and consumer groups (a regex: the dots escaped).
    deploy/kafka/kafka.sh topics --delete --topic "${TOPICS//./\\.}\\..*" \
      >/dev/null 2>&1 || say "could not delete the topics $TOPICS.* (harmless)"
    deploy/kafka/kafka.sh run org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
      --bootstrap-server 127.0.0.1:9092 --delete --group "$TOPICS.downlink" --group "$TOPICS.check" \
      >/dev/null 2>&1 || true
  fi
  if [[ ${HERALD_IMAGE_TEST_KEEP:-0} == 1 ]]; then
    say "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  scripts/install-deps.sh >&2
fi

# --- the image ------------------------------------------------------------------------------

t_all=$SECONDS
if [[ $mode == reuse && -s .herald/image.tag ]]; then
  image=$(<.herald/image.tag)
  podman image exists "$image" || { say "$image (from .herald/image.tag) is gone: building"; mode=build; }
elif [[ $mode == reuse ]]; then
  mode=build
fi
if [[ $mode == build ]]; then
  t0=$SECONDS
  image=$(scripts/image.sh "$@")
  say "image built in $((SECONDS - t0)) s"
fi
podman image exists "$image" || fail "no image $image"
version=${image##*:}
size=$(podman image inspect --format '{{.Size}}' "$image")
say "testing $image ($((size / 1000000)) MB)"

# 1. The version compiled in.
for bin in herald herald-consumers herald-loadtest; do
  out=$("${PODMAN_RUN[@]}" --rm "$image" "$bin" --version 2>&1) || fail "$bin --version: $out"
  [[ $out == "$bin $version" ]] || fail "$bin --version printed '$out', expected '$bin $version'"
done
pass "herald, herald-consumers, herald-loadtest --version: $version"

# --- Kafka, configuration, credentials ------------------------------------------------------

deploy/kafka/kafka.sh start >/dev/null
for port in "$MQTT_PORT" "$HTTP_PORT"; do
  ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null ||
    fail "port $port is taken (set HERALD_IMAGE_TEST_MQTT_PORT / HERALD_IMAGE_TEST_HTTP_PORT)"
done

fleet_key=$("${PODMAN_RUN[@]}" --rm "$image" herald fleet-key) || fail "herald fleet-key"
cat >"$WORK/herald.toml" <<EOF
# scripts/image-test.sh, run $RUN_ID
[broker]
listen = "127.0.0.1:$MQTT_PORT"
drain_period = "5s"
shutdown_grace = "5s"

[broker.auth]
mode = "device"
fleet_key = "$fleet_key"

[kafka]
bootstrap_servers = "127.0.0.1:9092"
client_id = "herald-image-test"
uplink_rules = [
  { mqtt_topic = "devices/{device_id}/up/scan", kafka_topic = "$TOPICS.scan" },
]
dead_letter_topic = "$TOPICS.dead-letters"

[kafka.downlink]
topic = "$TOPICS.downlink"
group_id = "$TOPICS.downlink"
receipts_topic = "$TOPICS.receipts"

[kafka.presence]
topic = "$TOPICS.presence"

[kafka.cluster]
node_id = "image-test-$$"
topic_partitions = 1

[http]
listen = "127.0.0.1:$HTTP_PORT"
EOF
chmod 0755 "$WORK"
chmod 0644 "$WORK/herald.toml"
MOUNT=(-v "$WORK/herald.toml:/etc/herald/herald.toml:ro")

password() { # DEVICE
  "${PODMAN_RUN[@]}" --rm "${MOUNT[@]}" "$image" herald credentials "$1" --format env |
    sed -n 's/^HERALD_PASSWORD=//p'
}
pw=$(password "$DEVICE")
pw_watcher=$(password "$WATCHER")
[[ -n $pw && -n $pw_watcher ]] || fail "herald credentials printed no password"

# --- run ------------------------------------------------------------------------------------

t0=$SECONDS
touch "$WORK/topics-created"
# Hardened as the Helm chart runs it: read-only root filesystem (no tmpfs either), no
# capabilities, no privilege escalation.
"${PODMAN_RUN[@]}" -d --name "$NAME" --stop-timeout 60 "${MOUNT[@]}" \
  --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges \
  "$image" >/dev/null || fail "podman run"

# 2. Who runs.
pid1=$(podman exec "$NAME" cat /proc/1/comm) || fail "podman exec"
uid=$(podman exec "$NAME" id -u)
# The children of PID 1 (podman exec's own processes have parent 0), from /proc/*/stat.
child=$(podman exec "$NAME" sh -c 'for d in /proc/[0-9]*; do
  set -- $(cat "$d/stat" 2>/dev/null) && [ "$4" = 1 ] && echo "$2"; done; true' | tr -d '()' | xargs)
[[ $pid1 == tini && $uid == 10001 && $child == herald ]] ||
  fail "PID 1 is '$pid1', its child '$child', uid $uid (expected tini, herald, 10001)"
pass "runs as uid 10001, tini is PID 1, herald its child"

# 3. Probes.
code=000
until [[ $code == 200 ]]; do
  [[ $(podman inspect --format '{{.State.Running}}' "$NAME") == true ]] || fail "the container exited"
  ((SECONDS - t0 < 120)) || fail "/readyz is $code after 120 s"
  sleep 0.5
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$HTTP_PORT/readyz" || true)
done
ready_s=$((SECONDS - t0))
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$HTTP_PORT/healthz" || true)
[[ $code == 200 ]] || fail "/healthz is $code"
pass "/healthz 200, /readyz 200 after ${ready_s} s"

# 4. MQTT connect and a QoS 1 uplink.
payload="{\"code\":\"281234567890123456\",\"scanId\":\"image-test-$RUN_ID\"}"
if ! mosquitto_pub -d -V mqttv5 -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -i "$DEVICE" -u "$DEVICE" -P "$pw" \
  -t "devices/$DEVICE/up/scan" -m "$payload" >"$WORK/pub.log" 2>&1; then
  cat "$WORK/pub.log" >&2
  fail "mosquitto_pub"
fi
if ! grep -q 'received CONNACK (0)' "$WORK/pub.log" ||
  ! grep -q 'received PUBACK (Mid: 1, RC:0)' "$WORK/pub.log"; then
  cat "$WORK/pub.log" >&2
  fail "no CONNACK 0 / PUBACK 0"
fi
pass "MQTT 5 connect as $DEVICE: CONNACK 0; QoS 1 uplink: PUBACK 0"

# 5. The uplink in Kafka.
deploy/kafka/kafka.sh console-consumer "$TOPICS.scan" --from-beginning --max-messages 1 \
  --timeout-ms 30000 --property print.key=true --group "$TOPICS.check" \
  --consumer-property enable.auto.commit=false >"$WORK/kafka.out" 2>"$WORK/kafka.err" || true
record=$(head -n 1 "$WORK/kafka.out")
[[ $record == "$DEVICE"$'\t'"$payload" ]] ||
  { cat "$WORK/kafka.err" >&2; fail "Kafka topic $TOPICS.scan holds '$record', expected key $DEVICE, value $payload"; }
pass "the uplink is in Kafka ($TOPICS.scan): key $DEVICE, value $payload"

# 6. The version in the metrics.
metric=$(curl -s --max-time 5 "http://127.0.0.1:$HTTP_PORT/metrics" | grep '^herald_build_info{' || true)
[[ $metric == *"version=\"$version\""* ]] || fail "herald_build_info is '$metric', expected version=\"$version\""
pass "$metric"

# 7. SIGTERM with a device connected: the drain, then exit code 0.
# (stdbuf: mosquitto_sub's -d lines go to stdout, block-buffered into a file otherwise)
stdbuf -oL mosquitto_sub -d -V mqttv5 -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -i "$WATCHER" -u "$WATCHER" -P "$pw_watcher" \
  -t "devices/$WATCHER/down/#" >"$WORK/sub.log" 2>&1 &
watcher_pid=$!
for _ in $(seq 50); do
  grep -qs 'received SUBACK' "$WORK/sub.log" && break
  sleep 0.1
done
grep -q 'received SUBACK' "$WORK/sub.log" || { cat "$WORK/sub.log" >&2; fail "the second device did not subscribe"; }
t_stop=$(date +%s%N)
podman stop -t 60 "$NAME" >/dev/null || fail "podman stop"
stop_ms=$((($(date +%s%N) - t_stop) / 1000000))
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
podman logs "$NAME" >"$WORK/herald.log" 2>&1 || true
kill "$watcher_pid" 2>/dev/null || true
wait "$watcher_pid" 2>/dev/null || true
watcher_pid=
grep -q 'draining' "$WORK/herald.log" || fail "no drain in the log after SIGTERM"
grep -q 'Received DISCONNECT (139)' "$WORK/sub.log" || { cat "$WORK/sub.log" >&2; fail "the connected device got no DISCONNECT 0x8B (server shutting down)"; }
[[ $exit_code == 0 ]] || fail "exit code $exit_code after SIGTERM"
((stop_ms < 30000)) || fail "the stop took $stop_ms ms (drain bound: 5 s + 5 s + the Kafka flush)"
pass "podman stop (SIGTERM via tini): drained (the connected device got DISCONNECT 0x8B), exit code 0 in $((stop_ms / 1000)).$(printf '%03d' $((stop_ms % 1000))) s"

say "all checks passed for $image in $((SECONDS - t_all)) s"
