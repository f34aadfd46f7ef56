#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (scripts/install-deps.sh), starts the local Kafka (deploy/kafka/kafka.sh, or
# reuses one already serving on 127.0.0.1:9092), then runs every Rust test.
# The integration tests talk to that real Kafka; the outage test starts and
# kills a second Kafka of its own on port 19192. Then the short fault-injection suite
# (benches/faults.sh --short) and a short fuzzing run (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
deploy/kafka/kafka.sh start >/dev/null

# On CI the build happens once: incremental caches only cost disk there.
[[ -n ${CI:-} ]] && export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# Two cores: run test binaries' tests two at a time.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
cargo test --workspace --locked "$@"
[[ ${HERALD_SKIP_CHART:-0} == 1 ]] || scripts/chart-check.sh  # Helm chart: lint, template, kubernetes-validate --strict (installs helm, kubernetes-validate if missing)

# Fault injection, short variant (benches/faults.sh --short: seconds per scenario, its own
# Kafka on port 19392 and Herald on 21885): every scenario must end with 0
# acknowledged-but-lost. About 5 minutes. HERALD_SKIP_FAULTS=1 skips it.
[[ ${HERALD_SKIP_FAULTS:-0} == 1 ]] || benches/faults.sh --short

# Fuzzing smoke run: every cargo-fuzz target for 15 s (scripts/fuzz.sh installs nightly and
# cargo-fuzz if missing; about 5 minutes on a fresh 2-core machine, most of it the build).
# HERALD_SKIP_FUZZ=1 skips it.
[[ ${HERALD_SKIP_FUZZ:-0} == 1 ]] || scripts/fuzz.sh 15
