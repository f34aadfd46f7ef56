#!/usr/bin/env bash
# Checks the Helm chart deploy/helm/herald offline, without a cluster:
#
#   1. helm lint --strict, with the default values and with each ci/*-values.yaml
#      (values.schema.json included: a misspelled value fails);
#   2. helm template for each of them;
#   3. kubernetes-validate --strict on every rendered manifest: the Kubernetes
#      API schemas of a pinned version, unknown fields are errors;
#   4. the chart's own promises: the values schema refuses a misspelled key;
#      herald.toml and consumers.toml are valid TOML, and `herald check-config`
#      accepts herald.toml when a herald binary is at hand; every PromQL
#      expression of the alerts and the dashboard parses and names only metrics
#      that Herald's sources register; every alert's runbook_url points at a
#      heading of docs/operations.md; terminationGracePeriodSeconds follows
#      the drain settings.
#
# Installs what it needs only if missing, under $HERALD_TOOLS_DIR (default
# ~/.cache/herald/tools): helm from the Go module proxy (`go install`, about
# 2 minutes the first time) and kubernetes-validate + promql-parser from PyPI
# in a virtualenv. Exits non-zero on any failure. scripts/test.sh runs it after
# the Rust tests (HERALD_SKIP_CHART=1 skips it there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HELM_VERSION=v3.22.0
KUBE_VERSION=1.30.0                 # the Kubernetes version rendered for and validated against
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMQL_PARSER_VERSION=0.11.0
CHART=deploy/helm/herald
TOOLS=${HERALD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/herald/tools}
OUT=${HERALD_CHART_OUT:-target/chart-check}

say() { printf 'chart-check: %s\n' "$*" >&2; }
passed=0
failed=0
pass() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAILED: $*"; }

# --- tools -----------------------------------------------------------------
mkdir -p "$TOOLS/bin" "$OUT"
HELM=$TOOLS/bin/helm
if ! "$HELM" version --short 2>/dev/null | grep -q "^${HELM_VERSION%.*}"; then
  GO=$(command -v go || true)
  [[ -z $GO && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
  [[ -n $GO ]] || { say "error: helm is missing and there is no Go toolchain to build it"; exit 1; }
  say "installing helm $HELM_VERSION with go install (a few minutes the first time)"
  GOBIN=$TOOLS/bin GOFLAGS= "$GO" install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
# `go install` leaves helm without its release ldflags: it reports v3.22 and
# would assume Kubernetes 1.20. Every call below names the version instead.
say "$("$HELM" version --short)"

VENV=$TOOLS/venv
want_py() { "$VENV/bin/python" - "$@" <<'EOF'
import importlib.metadata as m, sys
wanted = dict(a.split("==") for a in sys.argv[1:])
sys.exit(0 if all(m.version(k) == v for k, v in wanted.items()) else 1)
EOF
}
py_pkgs=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "promql-parser==$PROMQL_PARSER_VERSION")
if ! [[ -x $VENV/bin/python ]] || ! want_py "${py_pkgs[@]}" 2>/dev/null; then
  say "installing ${py_pkgs[*]} (PyPI) into $VENV"
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${py_pkgs[@]}"
fi
KV=$VENV/bin/kubernetes-validate

# --- lint, template, validate ----------------------------------------------
# "default" (values.yaml alone) and every ci/<name>-values.yaml.
declare -A valuesets=([default]="")
for f in "$CHART"/ci/*-values.yaml; do
  [[ -e $f ]] || continue
  name=$(basename "$f" -values.yaml)
  valuesets[$name]=$f
done

for name in $(printf '%s\n' "${!valuesets[@]}" | sort); do
  args=()
  [[ -n ${valuesets[$name]} ]] && args=(-f "${valuesets[$name]}")
  if "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}" >"$OUT/lint-$name.log" 2>&1; then
    pass "helm lint --strict ($name values)"
  else
    cat "$OUT/lint-$name.log" >&2; fail "helm lint --strict ($name values)"
  fi
  rendered=$OUT/$name.yaml
  if "$HELM" template herald "$CHART" --namespace herald --kube-version "$KUBE_VERSION" \
      "${args[@]}" >"$rendered" 2>"$OUT/template-$name.log"; then
    pass "helm template ($name values): $(grep -c '^kind:' "$rendered") resources in $rendered"
  else
    cat "$OUT/template-$name.log" >&2; fail "helm template ($name values)"; continue
  fi
  # kubernetes-validate has no schema for custom resources (ServiceMonitor,
  # PrometheusRule): it warns "Couldn't find schema" and skips them, which is
  # its only way to skip missing schemas (no option needed or offered). Any
  # other kind it cannot find is a failure here; the two CRDs are checked
  # below (PromQL, runbooks) instead.
  if "$KV" --strict --kubernetes-version "$KUBE_VERSION" --quiet "$rendered" >"$OUT/validate-$name.log" 2>&1; then
    unexpected=$(grep '^WARN' "$OUT/validate-$name.log" | grep -Ev 'kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1' || true)
    if [[ -n $unexpected ]]; then
      echo "$unexpected" >&2; fail "kubernetes-validate --strict ($name): a kind without a schema"
    else
      pass "kubernetes-validate --strict --kubernetes-version $KUBE_VERSION ($name values; CRDs skipped: $(grep -c '^WARN' "$OUT/validate-$name.log" || true))"
    fi
  else
    cat "$OUT/validate-$name.log" >&2; fail "kubernetes-validate --strict ($name values)"
  fi
done

# The schema refuses misspelled values (additionalProperties: false).
for bad in replicaCont=3 service.externalTraficPolicy=Local consumers.announcer.autoscalling.enabled=false; do
  if "$HELM" template herald "$CHART" --kube-version "$KUBE_VERSION" --set "$bad" >/dev/null 2>"$OUT/schema.log" \
      || ! grep -q "additional properties" "$OUT/schema.log"; then
    cat "$OUT/schema.log" >&2; fail "values.schema.json accepted the misspelled --set $bad"
  else
    pass "values.schema.json refuses --set $bad"
  fi
done

# A drain of 1m30s + 15s grace: 90 + 15 + 15 + 30 + 10 = 160 s.
tgps=$("$HELM" template herald "$CHART" --kube-version "$KUBE_VERSION" --show-only templates/statefulset.yaml \
  --set-string config.broker.drain_period=1m30s --set-string config.broker.shutdown_grace=15s \
  | sed -n 's/^ *terminationGracePeriodSeconds: //p')
if [[ $tgps == 160 ]]; then
  pass "terminationGracePeriodSeconds follows drain_period and shutdown_grace (160 s)"
else
  fail "terminationGracePeriodSeconds is '$tgps' for a 1m30s drain and 15s grace, expected 160"
fi

# A configuration change rolls the nodes (checksum/config); the pod template
# carries no helm.sh/chart label, so a new chart version alone rolls nothing.
sts() { "$HELM" template herald "$CHART" --kube-version "$KUBE_VERSION" --show-only templates/statefulset.yaml "$@"; }
sum_default=$(sts | grep 'checksum/config')
sum_changed=$(sts --set-string config.broker.drain_period=25s | grep 'checksum/config')
if [[ -n $sum_default && $sum_default != "$sum_changed" ]] && ! sts | sed -n '/^  template:/,$p' | grep -q 'helm.sh/chart'; then
  pass "checksum/config follows herald.toml; no helm.sh/chart label in the pod template"
else
  fail "checksum/config does not follow herald.toml, or the pod template carries helm.sh/chart"
fi

# --- the rendered contents ---------------------------------------------------
HERALD_BIN=${HERALD_BIN:-}
if [[ -z $HERALD_BIN ]]; then
  for b in target/debug/herald target/release/herald; do
    [[ -x $b ]] && { HERALD_BIN=$b; break; }
  done
fi
cat >"$OUT/contents.py" <<'EOF'
import json, os, re, subprocess, sys, tempfile, tomllib
import yaml, promql_parser

out, herald, names = sys.argv[1], sys.argv[2], sorted(sys.argv[3:])
ok = failed = 0
def report(good, what):
    global ok, failed
    if good:
        ok += 1
        print(f"chart-check: ok: {what}", file=sys.stderr)
    else:
        failed += 1
        print(f"chart-check: FAILED: {what}", file=sys.stderr)

# Metric names the sources register ("herald_..." string literals).
registered = set()
for top in ["broker/src", "bridge/src", "kafka/src", "consumers/src", "build-info/src", "herald/src"]:
    for root, _, files in os.walk(top):
        for f in files:
            if f.endswith(".rs"):
                registered |= set(re.findall(r'"(herald_[a-z0-9_]+)"', open(os.path.join(root, f)).read()))
# Not Herald's: the process collector's and kube-state-metrics' series.
external = re.compile(r"^(process_[a-z_]+|kube_pod_deletion_timestamp)$")

def metric_names(expr):
    names = set(re.findall(r"\b((?:herald|process|kube)_[a-z0-9_]+)\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count")) else n for n in names}

def check_expr(expr, where):
    try:
        promql_parser.parse(expr)
    except ValueError as e:
        report(False, f"{where}: PromQL does not parse ({e}): {expr}")
        return
    unknown = [n for n in metric_names(expr) if n not in registered and not external.match(n)]
    report(not unknown, f"{where}: parses; metrics known" + (f" — UNKNOWN: {unknown}" if unknown else ""))

# GitHub's heading anchors in docs/operations.md.
def slug(h):
    h = re.sub(r"[^\w\- ]", "", h.strip().lower())
    return h.replace(" ", "-")
anchors = {slug(l.lstrip("#")) for l in open("docs/operations.md") if l.startswith("#")}

for name in names:
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{name}.yaml")) if d]
    kinds = {d["kind"] for d in docs}
    for d in docs:
        if d["kind"] == "ConfigMap":
            for key, text in d.get("data", {}).items():
                if key.endswith(".toml"):
                    try:
                        tomllib.loads(text)
                        report(True, f"{name}: {key} is valid TOML")
                    except tomllib.TOMLDecodeError as e:
                        report(False, f"{name}: {key} is not valid TOML: {e}")
                        continue
                    if key == "herald.toml":
                        if not herald:
                            print(f"chart-check: skipped: {name}: herald check-config (no herald binary; set HERALD_BIN)", file=sys.stderr)
                            continue
                        with tempfile.TemporaryDirectory() as tmp:
                            cfg = os.path.join(tmp, "herald.toml")
                            open(cfg, "w").write(text)
                            keyfile = os.path.join(tmp, "fleet.key")
                            open(keyfile, "w").write("aGVyYWxkLWNoYXJ0LWNoZWNrLWZsZWV0LWtleS0wMDE=\n")
                            env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
                            env["HERALD_BROKER__AUTH__FLEET_KEY_FILE"] = keyfile
                            # What the pod's environment adds (SASL credentials through the env).
                            env["HERALD_KAFKA__CLUSTER__NODE_ID"] = "herald-0"
                            if "sasl.mechanism" in text:
                                opts = '{"sasl.username"="u","sasl.password"="p"}'
                                env["HERALD_KAFKA__PRODUCER_OPTIONS"] = opts
                                env["HERALD_KAFKA__CONSUMER_OPTIONS"] = opts
                            r = subprocess.run([herald, "--config", cfg, "check-config"], env=env,
                                               capture_output=True, text=True)
                            if r.returncode != 0 and "proxy_protocol" in r.stderr and "unknown field" in r.stderr:
                                print(f"chart-check: skipped: {name}: herald check-config (this build of {herald} "
                                      "does not know broker.proxy_protocol yet)", file=sys.stderr)
                                continue
                            report(r.returncode == 0 and "configuration is valid" in r.stdout,
                                   f"{name}: {herald} check-config accepts herald.toml"
                                   + ("" if r.returncode == 0 else f": {r.stderr.strip()}"))
                if key.endswith(".json"):
                    dash = json.loads(text)
                    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
                    subst = lambda e: e.replace("$__rate_interval", "5m")
                    bad = []
                    for e in exprs:
                        try:
                            promql_parser.parse(subst(e))
                        except ValueError as err:
                            bad.append(f"{err}: {e}")
                    unknown = sorted({n for e in exprs for n in metric_names(e)
                                      if n not in registered and not external.match(n)})
                    report(not bad and not unknown,
                           f"{name}: dashboard {key}: {len(exprs)} queries parse and name known metrics"
                           + (f" — {bad} {unknown}" if bad or unknown else ""))
        if d["kind"] == "PrometheusRule":
            rules = [r for g in d["spec"]["groups"] for r in g["rules"]]
            for r in rules:
                check_expr(r["expr"], f"{name}: alert {r['alert']}")
                url = r.get("annotations", {}).get("runbook_url", "")
                anchor = url.rpartition("#")[2]
                report(anchor in anchors and anchor == r["alert"].lower(),
                       f"{name}: alert {r['alert']}: runbook_url #{anchor} is a heading of docs/operations.md")
        if d["kind"] == "StatefulSet":
            c = d["spec"]["template"]["spec"]["containers"][0]
            probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe", "startupProbe")}
            report(probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz"},
                   f"{name}: probes liveness /healthz (never Kafka), readiness and startup /readyz")
    print(f"chart-check: {name}: kinds {sorted(kinds)}", file=sys.stderr)
print(f"{ok} {failed}")
EOF
if counts=$("$VENV/bin/python" "$OUT/contents.py" "$OUT" "$HERALD_BIN" "${!valuesets[@]}"); then
  read -r sub_passed sub_failed <<<"$counts"
  passed=$((passed + sub_passed))
  failed=$((failed + sub_failed))
else
  fail "the checks of the rendered contents did not run"
fi

echo "chart-check: $passed passed, $failed failed"
[[ $failed == 0 ]]
