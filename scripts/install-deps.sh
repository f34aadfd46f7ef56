#!/usr/bin/env bash
# install-deps.sh - installs what Herald's build and test suite need on a Debian 12 machine.
#
# Idempotent: each item is checked first and only what is missing is installed, so a second run
# does nothing (and never runs `apt-get update` when nothing is missing). Meant to run as root
# (CI, fresh machines); as another user it uses sudo for apt-get.
#
#   Debian packages  mosquitto, mosquitto-clients  (MQTT test client tools; the broker is a
#                                                   benchmark peer, started by the tests)
#                    cmake, build-essential, pkg-config, libssl-dev, zlib1g-dev, libcurl4-openssl-dev, openssl (test certificates)
#                                                  (rdkafka's cmake build needs a C toolchain)
#                    openjdk-17-jre-headless, maven (only if java 17+ / mvn are missing)
#                    python3, python3-pip           (only if missing)
#   Python           paho-mqtt 2.x                  (python3 -m pip, if `import paho.mqtt` fails
#                                                   or finds 1.x)
#   Kafka            deploy/kafka/kafka.sh install  (broker jars from Maven Central, once)
#
# Usage: scripts/install-deps.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { echo "install-deps: $*"; }

SUDO=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || { say "error: not root and no sudo"; exit 1; }
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# --- Debian packages ------------------------------------------------------------------------

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

java_ok() {
  local v
  command -v java >/dev/null || return 1
  v=$(java -version 2>&1 | sed -n -E '1s/.*version "([0-9]+)[."].*/\1/p')
  [[ $v =~ ^[0-9]+$ ]] && ((v >= 17))
}

missing=()
for p in mosquitto mosquitto-clients cmake build-essential pkg-config libssl-dev zlib1g-dev libcurl4-openssl-dev openssl; do
  pkg_installed "$p" || missing+=("$p")
done
java_ok || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# flock and setsid (util-linux) are used by kafka.sh; Debian always has them, check anyway.
{ command -v flock && command -v setsid; } >/dev/null || missing+=(util-linux)

fresh_mosquitto=no
if ((${#missing[@]})); then
  pkg_installed mosquitto || fresh_mosquitto=yes
  say "installing Debian packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq "${missing[@]}"
else
  say "Debian packages: all present"
fi

# The mosquitto package starts a system broker on port 1883 where systemd runs. Herald's tests
# start their own mosquitto on their own ports when they need one, and a system broker would
# take 1883 from Herald: stop and disable it, but only if this run installed it.
if [[ $fresh_mosquitto == yes ]] && command -v systemctl >/dev/null &&
  systemctl is-active --quiet mosquitto 2>/dev/null; then
  say "stopping and disabling the system mosquitto service (port 1883) that the package started"
  "${SUDO[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

# --- Python: paho-mqtt 2.x --------------------------------------------------------------------

paho_ok() {
  python3 -c 'import sys, paho.mqtt; sys.exit(0 if paho.mqtt.__version__.split(".")[0] == "2" else 1)' \
    2>/dev/null
}
if paho_ok; then
  say "paho-mqtt 2.x: present"
else
  say "installing paho-mqtt 2.x with python3 -m pip"
  # Debian's own python3 refuses pip installs into the system (PEP 668); a venv-less CI
  # machine has no better place, so retry with --break-system-packages in that case.
  if ! python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3' 2>/tmp/install-deps-pip.$$; then
    if grep -q externally-managed /tmp/install-deps-pip.$$; then
      python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'paho-mqtt>=2,<3'
    else
      cat /tmp/install-deps-pip.$$ >&2
      rm -f /tmp/install-deps-pip.$$
      exit 1
    fi
  fi
  rm -f /tmp/install-deps-pip.$$
  paho_ok || { say "error: paho-mqtt 2.x still not importable by python3"; exit 1; }
  say "paho-mqtt $(python3 -c 'import paho.mqtt; print(paho.mqtt.__version__)') installed"
fi

# --- Kafka broker jars ------------------------------------------------------------------------

"$ROOT/deploy/kafka/kafka.sh" install
say "Kafka: jars in $("$ROOT/deploy/kafka/kafka.sh" env | sed -n 's/^HERALD_KAFKA_HOME=//p')/libs"
say "done"
