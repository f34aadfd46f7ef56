#!/usr/bin/env bash
# Runs Herald locally with everything it needs: installs dependencies, starts
# the local Kafka, then `herald run` with deploy/herald.dev.toml (device auth
# with a development fleet key, MQTT on 127.0.0.1:1883, HTTP on :9090).
# Extra arguments go to cargo (e.g. --release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
deploy/kafka/kafka.sh start >/dev/null
exec cargo run --locked "$@" --bin herald -- --config deploy/herald.dev.toml run
