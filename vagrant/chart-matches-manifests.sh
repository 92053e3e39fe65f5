#!/usr/bin/env bash
# Renders the Helm chart (deploy/helm/sluice) with real Helm and its default values, and compares the
# objects with the plain manifests deploy/rbac.yaml + deploy/daemonset.yaml as parsed YAML: comments,
# formatting and document order are ignored, any other difference fails and is printed field by
# field. It first proves it can fail: a render with a changed value must differ.
# Needs helm (3) and python3 with PyYAML (the VM has both: provision.sh). Exit 0 when equal.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart=$repo/deploy/helm/sluice
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

compare() { # RENDERED: exit 0 when its objects equal the manifests', else print the differences
    python3 - "$1" "$repo/deploy/rbac.yaml" "$repo/deploy/daemonset.yaml" <<'PY'
import json
import sys

import yaml


def load(*paths):
    objs = {}
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                meta = doc.get("metadata") or {}
                key = "%s %s %s/%s" % (doc.get("apiVersion"), doc.get("kind"),
                                       meta.get("namespace", ""), meta.get("name"))
                if key in objs:
                    sys.exit("%s: %s appears twice" % (path, key))
                objs[key] = doc
    return objs


def diff(want, have, path, out):
    if isinstance(want, dict) and isinstance(have, dict):
        for k in sorted(set(want) | set(have)):
            p = "%s.%s" % (path, k)
            if k not in have:
                out.append("%s: manifests %s, chart has none" % (p, json.dumps(want[k])))
            elif k not in want:
                out.append("%s: chart %s, manifests have none" % (p, json.dumps(have[k])))
            else:
                diff(want[k], have[k], p, out)
    elif isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        for i, (a, b) in enumerate(zip(want, have)):
            diff(a, b, "%s[%d]" % (path, i), out)
    elif want != have or type(want) is not type(have):
        out.append("%s: manifests %s, chart %s" % (path, json.dumps(want), json.dumps(have)))


chart = load(sys.argv[1])
manifests = load(*sys.argv[2:])
out = []
for key in sorted(set(manifests) | set(chart)):
    if key not in chart:
        out.append("%s: in the manifests, not rendered by the chart" % key)
    elif key not in manifests:
        out.append("%s: rendered by the chart, not in the manifests" % key)
    else:
        diff(manifests[key], chart[key], key, out)
if out:
    print("the chart's render differs from the manifests:")
    for line in out:
        print("  " + line)
    sys.exit(1)
print("chart render == deploy/rbac.yaml + deploy/daemonset.yaml (%d objects)" % len(chart))
PY
}

helm lint "$chart"
helm template sluice "$chart" --namespace sluice-system >"$tmp/changed.yaml" --set logLevel=debug
if compare "$tmp/changed.yaml" >/dev/null; then
    echo "chart-matches-manifests: a render with logLevel=debug compared equal: the check proves nothing" >&2
    exit 1
fi
helm template sluice "$chart" --namespace sluice-system >"$tmp/default.yaml"
compare "$tmp/default.yaml"
