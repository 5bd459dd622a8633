"""Checks of deploy/check.sh that need Python (PyYAML and jsonschema, from the
kubernetes-validate venv). Each subcommand prints what it checked and exits 1 on a problem.

  crds CRD_DIR RENDER.yaml [KIND...]
      Validates every rendered custom resource against the openAPIV3Schema of its CRD in
      CRD_DIR (copies of the upstream CRDs, deploy/crds/). Unknown fields are errors unless the
      schema says x-kubernetes-preserve-unknown-fields, as the API server prunes (and
      `kubectl apply --validate=strict` refuses) them. KIND... are the kinds kubernetes-validate
      found no schema for: each must be one of the CRDs here, or the check fails.

  nats-keys NATS_CHART.tgz VALUES.yaml...
      Every key under `nats:` in the values files must exist in the NATS chart's default values
      (the chart ships no values.schema.json, so helm would silently ignore a misspelt key).
      Below a key whose default is an empty map, `merge` or `patch`, anything goes (those are
      the chart's free-form extension points). The bridge's own keys (enabled, url,
      credsSecret, credsSecretKey) are skipped.

  nats-image NATS_CHART.tgz VALUES.yaml SERVER_VERSION
      The NATS server image the chart deploys (our values over the chart's defaults) is on
      the same minor line as SERVER_VERSION (the nats-server the tests run, dev/nats-server).

  lock CHART_DIR
      Chart.lock pins exactly the dependencies of Chart.yaml, with the digest helm computes
      (so `helm dependency build` accepts it), and charts/ holds each locked version.

  alerts RULES.yaml TESTS.yaml OPERATIONS.md
      Every alert has a runbook_url pointing at a section of OPERATIONS.md that exists, and a
      promtool test case in which it fires (non-empty exp_alerts).

  metrics DASHBOARD.json RULES.yaml SOURCE_DIR...
      Every metric the code registers (metrics::counter!/gauge!/histogram! on a named
      constant) is on a dashboard panel or in an alert: an exported metric nobody looks at is
      either missing from the dashboard or should not be exported.
"""

import copy
import hashlib
import json
import os
import re
import sys
import tarfile

import jsonschema
import yaml

BRIDGE_NATS_KEYS = {"enabled", "url", "credsSecret", "credsSecretKey"}
FREE_FORM_KEYS = {"merge", "patch"}


def fail(problems, what):
    if problems:
        sys.exit(f"{what}:\n  " + "\n  ".join(problems))


# --- CRD schemas ---------------------------------------------------------------------------


def structural(schema):
    """An OpenAPI v3 CRD schema as a JSON Schema that rejects unknown fields."""
    s = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
        preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
        if node.get("type") == "object" and "properties" in node and not preserve:
            node.setdefault("additionalProperties", False)
        for key in ("properties", "patternProperties"):
            for sub in node.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key, []):
                walk(sub)

    walk(s)
    return s


def load_crds(crd_dir):
    schemas = {}
    for name in sorted(os.listdir(crd_dir)):
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(open(os.path.join(crd_dir, name))):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if version.get("served"):
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = (name, structural(schema))
    return schemas


def crds(crd_dir, render, unknown_kinds):
    schemas = load_crds(crd_dir)
    kinds_with_crd = {kind for (_, kind) in schemas}
    problems = [f"{k}: no Kubernetes schema and no CRD in {crd_dir}" for k in unknown_kinds
                if k not in kinds_with_crd]
    checked = {}
    for doc in yaml.safe_load_all(open(render)):
        if not doc:
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in schemas:
            if doc.get("kind") in kinds_with_crd:
                problems.append(f"{key[1]} {doc['metadata'].get('name')}: apiVersion {key[0]} is not "
                                f"served by the CRD in {crd_dir}")
            continue
        source, schema = schemas[key]
        where = f"{key[1]} {doc['metadata'].get('name')}"
        validator = jsonschema.Draft7Validator(schema)
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"{where}: {path}: {error.message} ({source})")
        checked[key[1]] = checked.get(key[1], 0) + 1
    fail(problems, "custom resources that do not match their CRD schema")
    summary = ", ".join(f"{k} x{n}" for k, n in sorted(checked.items())) or "none rendered"
    print(f"  CRD schemas: {summary} valid")


# --- the NATS subchart -------------------------------------------------------------------


def chart_file(tgz, name):
    with tarfile.open(tgz) as t:
        member = next(m for m in t.getmembers() if m.name.split("/", 1)[-1] == name)
        return t.extractfile(member).read().decode()


def nats_keys(tgz, values_files):
    defaults = yaml.safe_load(chart_file(tgz, "values.yaml"))
    problems = []

    def walk(user, default, path):
        for key, value in user.items():
            where = f"{path}.{key}"
            if key not in default:
                near = [k for k in default if k.lower() == str(key).lower()]
                hint = f" (did you mean {near[0]}?)" if near else ""
                problems.append(f"{where}: not a value of the NATS chart{hint}")
                continue
            sub = default[key]
            if key in FREE_FORM_KEYS or not isinstance(sub, dict) or not sub:
                continue
            if isinstance(value, dict):
                walk(value, sub, where)

    counted = 0
    for path in values_files:
        values = yaml.safe_load(open(path)) or {}
        nats = values.get("nats") or {}
        own = {k: v for k, v in nats.items() if k not in BRIDGE_NATS_KEYS}
        before = len(problems)
        walk(own, defaults, "nats")
        problems[before:] = [f"{path}: {p}" for p in problems[before:]]
        counted += len(own)
    fail(problems, "keys the NATS chart does not have (helm would ignore them)")
    print(f"  NATS subchart keys: {counted} top-level keys in {len(values_files)} files exist")


def nats_image(tgz, values_file, server_version):
    defaults = yaml.safe_load(chart_file(tgz, "values.yaml"))
    ours = (yaml.safe_load(open(values_file)) or {}).get("nats", {})
    image = dict(defaults["container"]["image"])
    image.update(((ours.get("container") or {}).get("image")) or {})
    tag = str(image.get("tag") or "")
    line = ".".join(server_version.split(".")[:2])
    if image.get("fullImageName") or not re.match(rf"^{re.escape(line)}\.\d+(-|$)", tag):
        sys.exit(f"the NATS chart deploys image {image.get('repository')}:{tag}, not the "
                 f"nats-server {line}.x line the tests run ({server_version}, dev/nats-server)")
    print(f"  NATS image {image['repository']}:{tag} is on the tested line {line}.x "
          f"(tests: {server_version})")


def lock(chart_dir):
    chart = yaml.safe_load(open(os.path.join(chart_dir, "Chart.yaml")))
    lockfile = os.path.join(chart_dir, "Chart.lock")
    if not os.path.exists(lockfile):
        sys.exit(f"{lockfile} is missing")
    locked = yaml.safe_load(open(lockfile))
    problems = []
    req = chart.get("dependencies") or []
    # helm's field order (chart.Dependency) and omitempty, as in resolver.HashReq.
    def dep(d, fields):
        out = {}
        for f in fields:
            if f in d and (d[f] or f in ("name", "repository")):
                out[f] = d[f]
        return out
    req_json = [dep(d, ["name", "version", "repository", "condition", "tags", "enabled",
                        "import-values", "alias"]) for d in req]
    lock_json = [dep(d, ["name", "version", "repository"]) for d in locked["dependencies"]]
    data = json.dumps([req_json, lock_json], separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != locked.get("digest"):
        problems.append(f"Chart.lock digest {locked.get('digest')} != {digest}: Chart.lock is out "
                        "of sync with Chart.yaml (run `helm dependency update` with network)")
    for d in req:
        if not re.fullmatch(r"\d+\.\d+\.\d+", str(d.get("version"))):
            problems.append(f"dependency {d['name']}: version {d.get('version')!r} is a range; pin "
                            "an exact version")
    for d in locked["dependencies"]:
        tgz = os.path.join(chart_dir, "charts", f"{d['name']}-{d['version']}.tgz")
        if not os.path.exists(tgz):
            problems.append(f"{tgz} is missing (vendored so the chart renders offline)")
    fail(problems, "chart dependencies")
    print("  Chart.lock in sync with Chart.yaml: " +
          ", ".join(f"{d['name']} {d['version']}" for d in locked["dependencies"]))


def anchor(heading):
    """GitHub's anchor of a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def alerts(rules_file, tests_file, operations):
    rules = yaml.safe_load(open(rules_file))
    tests = yaml.safe_load(open(tests_file))
    doc = os.path.basename(operations)
    anchors = {anchor(l.lstrip("#")) for l in open(operations) if l.startswith("#")}
    fired = set()
    for case in tests.get("tests", []):
        for t in case.get("alert_rule_test", []):
            if t.get("exp_alerts"):
                fired.add(t["alertname"])
    problems, names = [], []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if not name:
                continue
            names.append(name)
            url = (rule.get("annotations") or {}).get("runbook_url", "")
            m = re.fullmatch(rf".*/{re.escape(doc)}#([\w-]+)", url)
            if not m:
                problems.append(f"{name}: runbook_url {url!r} is not a link to {doc}#<section>")
            elif m.group(1) not in anchors:
                problems.append(f"{name}: runbook_url anchor #{m.group(1)} is no heading of {operations}")
            if name not in fired:
                problems.append(f"{name}: no test in {tests_file} makes it fire")
    fail(problems, "alerts without a runbook or a firing test")
    print(f"  {len(names)} alerts: each has a runbook section in {operations} and a firing test")


METRIC_CALL = re.compile(r"metrics::(?:counter|gauge|histogram)!\(\s*(?:[\w:]+::)?([A-Z][A-Z0-9_]*)\b")
METRIC_CONST = re.compile(r'pub const ([A-Z][A-Z0-9_]*): &str = "([a-z_:][a-z0-9_:]*)";')


def metrics(dashboard, rules_file, source_dirs):
    used_consts, consts = set(), {}
    for top in source_dirs:
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in ("target", "tests")]
            for f in files:
                if f.endswith(".rs"):
                    text = open(os.path.join(root, f)).read()
                    used_consts.update(METRIC_CALL.findall(text))
                    for const, value in METRIC_CONST.findall(text):
                        consts.setdefault(const, set()).add(value)
    exported = sorted({v for c in used_consts for v in consts.get(c, ())})
    if len(exported) < 20:
        sys.exit(f"found only {len(exported)} exported metrics in {source_dirs}: the scan is broken")
    board, rules = open(dashboard).read(), open(rules_file).read()
    exprs = " ".join(re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', board)
                     + re.findall(r'"query": "(label_values[^"]*)"', board))
    rule_exprs = " ".join(str(r.get("expr", "")) for g in yaml.safe_load(rules)["groups"]
                          for r in g["rules"])
    unused = [m for m in exported if not re.search(rf"\b{m}(_bucket|_sum|_count)?\b", exprs + " " + rule_exprs)]
    fail([f"{m}: exported, but on no dashboard panel and in no alert" for m in unused],
         "exported metrics nobody looks at")
    print(f"  {len(exported)} exported metrics, each on a panel or in an alert")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "crds":
        crds(args[0], args[1], args[2:])
    elif command == "nats-keys":
        nats_keys(args[0], args[1:])
    elif command == "nats-image":
        nats_image(*args)
    elif command == "lock":
        lock(args[0])
    elif command == "alerts":
        alerts(*args)
    elif command == "metrics":
        metrics(args[0], args[1], args[2:])
    else:
        sys.exit(f"unknown command {command}")
