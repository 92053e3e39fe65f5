#!/usr/bin/env bash
# sluice's smoke suite on real Kubernetes: a two-node kind cluster in the Vagrant VM (README.md).
# Run as root in the VM, after provision.sh built the image:
#
#   smoke.sh               every step in order, then deletes the cluster; exit 0 only if all passed
#   smoke.sh --list        the steps: what each checks, whether it needs Kubernetes, what covers it on CI
#   smoke.sh --no-k8s      only the steps that need no cluster (kernel, chart)
#   smoke.sh STEP...       only these steps, in this order (on a cluster left by an earlier --keep run)
#   smoke.sh --keep ...    leave the cluster up at the end (export KUBECONFIG=/var/tmp/sluice-smoke/kubeconfig)
#
# Each step prints `PASS <step>: ...` or `FAIL <step>: <why>` (or `SKIP`, after a failed set-up step);
# the last line is `smoke: N passed, N failed, N skipped`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$REPO/Cargo.toml" | head -n1)
SLUICE=${SLUICE_BIN:-$REPO/target/x86_64-unknown-linux-gnu/release/sluice}
ARCHIVE=$REPO/target/image/sluice-$VERSION.oci.tar
# What the DaemonSet's `sluice:<version>` means to the kubelet.
IMAGE=docker.io/library/sluice:$VERSION
APP_IMAGE=${SLUICE_SMOKE_APP_IMAGE:-docker.io/library/python:3.12-alpine}
ISTIO_VERSION=${ISTIO_VERSION:-1.26.0}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.2.1}
CLUSTER=sluice
NODES=("$CLUSTER-control-plane" "$CLUSTER-worker")
CLIENT_NODE=${NODES[0]}
SERVER_NODE=${NODES[1]}
SYS=sluice-system
NS=smoke
SERVER_HOST=server.$NS.svc.cluster.local
# kind's default CNI (kindnet) and the chart's default cni.confDir / cni.binDir.
CNI_CONF_DIR=/etc/cni/net.d
CONFLIST=$CNI_CONF_DIR/10-kindnet.conflist
CNI_BIN_DIR=/opt/cni/bin
# How long the long-running connection goes on after the first old agent was told to stop: well
# inside the chart's drainTimeout (30s), the time an old agent keeps carrying its connections.
LONG_AFTER_HANDOVER=10
WORK=/var/tmp/sluice-smoke
export KUBECONFIG=$WORK/kubeconfig

STEPS=(kernel chart cluster install workloads traffic tls policy metrics upgrade waypoint uninstall)
declare -A WHAT=(
    [kernel]="sluice kernel-check passes on the VM's kernel"
    [chart]="helm lint; helm template (defaults) == deploy/rbac.yaml + deploy/daemonset.yaml"
    [cluster]="two-node kind cluster, bpffs on each node, Istio + Gateway API CRDs, images loaded"
    [install]="CA secret, helm install, agents ready, sluice-cni in each node's conflist"
    [workloads]="namespace labelled ambient; server and client pods on different nodes, enrolled"
    [traffic]="client -> server through the Service (HTTP, TCP echo byte-exact) and the pod IP"
    [tls]="between the nodes: TLS records to port 15008, never the plaintext payload"
    [policy]="an AuthorizationPolicy DENY makes connections fail; deleting it restores them"
    [metrics]=":15020/stats/prometheus has istio_tcp_connections_opened_total for the server"
    [upgrade]="rollout restart: a long-running connection ends byte-exact, no new connection fails"
    [waypoint]="sluice waypoint generate + a Gateway: a running waypoint carries the Service's HTTP"
    [uninstall]="helm uninstall: each node's CNI config byte-identical to before; new pods start"
)
declare -A NEEDS_K8S=(
    [kernel]=no [chart]=no [cluster]=yes [install]=yes [workloads]=yes [traffic]=yes [tls]=yes
    [policy]=yes [metrics]=yes [upgrade]=yes [waypoint]=yes [uninstall]=yes
)
declare -A COVERED=(
    [kernel]="tests/tests/kernel.rs, and the kernel-matrix VMs of cargo xtask test"
    [chart]="cargo xtask manifests (the same comparison with an offline render)"
    [cluster]="-"
    [install]="tests/tests/install.rs (the agent installs, restores and removes its CNI plugin)"
    [workloads]="tests/tests/redirect.rs (enrollment by Istio's labels)"
    [traffic]="tests/tests/redirect.rs, tests/tests/tunnel.rs"
    [tls]="tests/tests/tunnel.rs (cross-node TLS 1.3 on the wire, no plaintext)"
    [policy]="tests/tests/policy.rs (L4 AuthorizationPolicy)"
    [metrics]="tests/tests/tunnel.rs (metrics and access logs)"
    [upgrade]="tests/tests/upgrade.rs (handover under load, readiness, kill -9 mid-handover)"
    [waypoint]="tests/tests/waypoint.rs (the waypoint itself); unit tests of sluice waypoint generate"
    [uninstall]="tests/tests/install.rs (conflist byte-identical, pods released, pins gone)"
)
# A failed set-up step skips every later step.
declare -A SETUP=([cluster]=1 [install]=1 [workloads]=1)

log() { printf '     %s\n' "$*"; }
# Inside a step: record why it fails, and fail.
die() {
    printf '%s\n' "$*" >"$WORK/reason"
    exit 1
}
# retry SECONDS CMD...: runs CMD every second until it succeeds; fails after SECONDS.
retry() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 1
    done
}
marker() { cat "$WORK/marker"; }
node_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
# The smoke client (client.py, written by write_app, mounted from a ConfigMap) inside the client pod.
client() { kubectl -n "$NS" exec client -- python3 /app/client.py "$@"; }
agents() { kubectl -n "$SYS" get pods -l app.kubernetes.io/name=sluice-agent -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
agent_on() {
    kubectl -n "$SYS" get pods -l app.kubernetes.io/name=sluice-agent --field-selector "spec.nodeName=$1" \
        -o jsonpath='{.items[0].metadata.name}'
}
# Every file of a node's CNI conf dir with its SHA-256.
cni_snapshot() { docker exec "$1" sh -c "cd $CNI_CONF_DIR && find . -type f -exec sha256sum {} + | sort -k 2"; }

diagnostics() {
    echo "     ---- diagnostics"
    kubectl get pods -A -o wide 2>/dev/null | grep -E "^NAMESPACE|^$SYS |^$NS " | sed 's/^/     /' || true
    kubectl -n "$SYS" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 12 | sed 's/^/     /' || true
    local p
    for p in $(agents 2>/dev/null); do
        echo "     -- last log lines of $p"
        kubectl -n "$SYS" logs "$p" --tail=15 2>/dev/null | sed 's/^/     /' || true
    done
}

# ---- steps (each runs in a subshell with errexit: any failing command fails the step) ----

step_kernel() {
    [[ -x $SLUICE ]] || die "$SLUICE is missing: run vagrant/provision.sh (cargo xtask image)"
    "$SLUICE" kernel-check || die "sluice kernel-check: kernel $(uname -r) lacks a feature the agent needs"
}

step_chart() {
    command -v helm >/dev/null || die "helm is not installed (vagrant/provision.sh)"
    "$REPO/vagrant/chart-matches-manifests.sh" || die "the chart's default render is not the plain manifests"
}

step_cluster() {
    local n
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    cat >"$WORK/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
EOF
    kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --kubeconfig "$KUBECONFIG" --wait 180s ||
        die "kind create cluster failed"
    kubectl wait --for=condition=Ready nodes --all --timeout=180s >/dev/null || die "nodes not Ready"
    for n in "${NODES[@]}"; do
        # kind's node containers are privileged but get a fresh sysfs without bpffs: mount one per node
        # (separate instances, so the two agents' pins do not meet).
        docker exec "$n" sh -c 'grep -q " /sys/fs/bpf bpf " /proc/mounts || mount -t bpf bpf /sys/fs/bpf'
        docker exec "$n" grep -q " /sys/fs/bpf bpf " /proc/mounts || die "$n: no bpffs at /sys/fs/bpf"
        docker exec "$n" grep -q " /sys/fs/cgroup cgroup2 " /proc/mounts || die "$n: no cgroup2 at /sys/fs/cgroup"
        retry 60 docker exec "$n" test -s "$CONFLIST" || die "$n: kindnet wrote no $CONFLIST"
        cni_snapshot "$n" >"$WORK/cni-before.$n"
        log "$n: CNI config before install: $(tr '\n' ' ' <"$WORK/cni-before.$n")"
    done
    kubectl apply --server-side -f \
        "https://raw.githubusercontent.com/istio/istio/$ISTIO_VERSION/manifests/charts/base/files/crd-all.gen.yaml" \
        >/dev/null || die "installing Istio $ISTIO_VERSION's CRDs failed"
    kubectl apply --server-side -f \
        "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml" \
        >/dev/null || die "installing Gateway API $GATEWAY_API_VERSION's CRDs failed"
    kubectl wait --for=condition=Established crd --all --timeout=120s >/dev/null

    # kind loads docker archives: convert the OCI archive, naming the image as the kubelet will ask.
    [[ -f $ARCHIVE ]] || die "$ARCHIVE is missing: run vagrant/provision.sh (cargo xtask image)"
    rm -f "$WORK/sluice.docker.tar"
    skopeo copy --quiet "oci-archive:$ARCHIVE" "docker-archive:$WORK/sluice.docker.tar:$IMAGE"
    kind load image-archive "$WORK/sluice.docker.tar" --name "$CLUSTER"
    docker pull -q "$APP_IMAGE" >/dev/null
    kind load docker-image "$APP_IMAGE" --name "$CLUSTER"
    for n in "${NODES[@]}"; do
        docker exec "$n" crictl inspecti "$IMAGE" >/dev/null || die "$n: $IMAGE is not in the node's containerd"
    done
}

step_install() {
    local n
    # Helm keeps its release in the namespace, so it must exist first; the chart's own Namespace object
    # then adopts it (Helm's ownership label and annotations).
    kubectl get namespace "$SYS" >/dev/null 2>&1 || kubectl create namespace "$SYS" >/dev/null
    kubectl label namespace "$SYS" app.kubernetes.io/managed-by=Helm --overwrite >/dev/null
    kubectl annotate namespace "$SYS" meta.helm.sh/release-name=sluice "meta.helm.sh/release-namespace=$SYS" \
        --overwrite >/dev/null
    rm -rf "$WORK/ca"
    "$SLUICE" ca init --dir "$WORK/ca" >/dev/null
    kubectl -n "$SYS" delete secret sluice-ca --ignore-not-found >/dev/null
    kubectl -n "$SYS" create secret generic sluice-ca --from-file="$WORK/ca/ca-cert.pem" \
        --from-file="$WORK/ca/ca-key.pem" --from-file="$WORK/ca/root-cert.pem" >/dev/null
    # Default values: kind's CNI directories are the chart's defaults.
    helm install sluice "$REPO/deploy/helm/sluice" --namespace "$SYS" >/dev/null || die "helm install failed"
    kubectl -n "$SYS" rollout status daemonset/sluice-agent --timeout=180s || die "the agents did not become ready"
    for n in "${NODES[@]}"; do
        retry 30 docker exec "$n" grep -q '"sluice-cni"' "$CONFLIST" ||
            die "$n: the agent did not append sluice-cni to $CONFLIST"
        docker exec "$n" test -x "$CNI_BIN_DIR/sluice-cni" || die "$n: no $CNI_BIN_DIR/sluice-cni"
    done
}

write_app() { # DIR: the sample workloads' programs
    mkdir -p "$1"
    cat >"$1/server.py" <<'PY'
"""HTTP on 8080 (answers MARKER and the path) and a TCP echo on 9000."""
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKER = os.environ["MARKER"].encode()


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = MARKER + b" " + self.path.encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


threading.Thread(target=TcpServer(("", 9000), Echo).serve_forever, daemon=True).start()
ThreadingHTTPServer(("", 8080), Http).serve_forever()
PY
    cat >"$1/client.py" <<'PY'
"""The smoke suite's client, run in the client pod.

get URL EXPECT [--headers]          one request on a new connection; 200 with EXPECT in the body
long HOST PORT STOPFILE MAX TAG     one connection sending lines to the echo server until STOPFILE
                                    exists (at most MAX s); every byte must come back, in order
loop URL EXPECT STOPFILE MAX        a new connection every 0.1 s until STOPFILE; none may fail
"""
import os
import socket
import sys
import threading
import time
import urllib.request


def get(url, expect, headers=False):
    with urllib.request.urlopen(url, timeout=3) as r:
        body = r.read()
        if headers:
            for k, v in r.getheaders():
                print(f"{k.lower()}: {v}")
    print(body.decode(errors="replace").strip())
    if expect.encode() not in body:
        sys.exit("the answer lacks the marker")


def long(host, port, stop, max_seconds, tag):
    s = socket.create_connection((host, int(port)), timeout=5)
    s.settimeout(20)
    received, errors, longest = bytearray(), [], [0.0]
    done = threading.Event()

    def reader():
        last = time.monotonic()
        try:
            while True:
                chunk = s.recv(65536)
                now = time.monotonic()
                longest[0] = max(longest[0], now - last)
                last = now
                if not chunk:
                    break
                received.extend(chunk)
        except OSError as e:
            errors.append(e)
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    sent, i, start = bytearray(), 0, time.monotonic()
    while not os.path.exists(stop) and time.monotonic() - start < float(max_seconds):
        line = f"{tag} {i:08d} {'x' * 100}\n".encode()
        s.sendall(line)
        sent.extend(line)
        i += 1
        time.sleep(0.05)
    s.shutdown(socket.SHUT_WR)
    if not done.wait(30):
        sys.exit("long: no end of stream 30 s after the half-close")
    if errors:
        sys.exit(f"long: read error: {errors[0]}")
    if bytes(received) != bytes(sent):
        sys.exit(f"long: echo differs: sent {len(sent)} bytes, received {len(received)}")
    took = time.monotonic() - start
    print(f"long: {i} lines, {len(sent)} bytes echoed byte-exact over {took:.1f} s "
          f"(longest pause {longest[0]:.1f} s)")


def loop(url, expect, stop, max_seconds):
    ok, failed, errors, start = 0, 0, [], time.monotonic()
    while not os.path.exists(stop) and time.monotonic() - start < float(max_seconds):
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                body = r.read()
            if expect.encode() in body:
                ok += 1
            else:
                failed += 1
                errors.append("an answer without the marker")
        except OSError as e:
            failed += 1
            errors.append(f"at {time.monotonic() - start:.1f} s: {e}")
        time.sleep(0.1)
    print(f"loop: {ok} new connections succeeded, {failed} failed")
    for e in errors[:10]:
        print(f"loop: {e}")
    sys.exit(0 if failed == 0 and ok > 0 else 1)


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "get":
        get(args[0], args[1], "--headers" in args[2:])
    elif cmd == "long":
        long(*args[:5])
    elif cmd == "loop":
        loop(*args[:4])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except OSError as e:
        sys.exit(f"{sys.argv[1]}: {e}")
PY
}

workloads_yaml() { # MARKER
    cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: $NS}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: $NS}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: $NS
  labels: {app: server}
spec:
  serviceAccountName: server
  nodeSelector: {kubernetes.io/hostname: $SERVER_NODE}
  containers:
    - name: server
      image: $APP_IMAGE
      command: [python3, -u, /app/server.py]
      env: [{name: MARKER, value: "$1"}]
      ports: [{containerPort: 8080}, {containerPort: 9000}]
      volumeMounts: [{name: app, mountPath: /app}]
  volumes: [{name: app, configMap: {name: smoke-app}}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: $NS}
spec:
  selector: {app: server}
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: tcp-echo, port: 9000, targetPort: 9000}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: $NS
  labels: {app: client}
spec:
  serviceAccountName: client
  nodeSelector: {kubernetes.io/hostname: $CLIENT_NODE}
  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
  containers:
    - name: client
      image: $APP_IMAGE
      command: [sleep, infinity]
      volumeMounts: [{name: app, mountPath: /app}]
  volumes: [{name: app, configMap: {name: smoke-app}}]
EOF
}

# enrolled NODE POD: the agent on NODE reports $NS/POD enrolled (`sluice status` in the agent pod).
enrolled() {
    local agent
    agent=$(agent_on "$1") || return 1
    kubectl -n "$SYS" exec "$agent" -- /usr/local/bin/sluice status --output json 2>/dev/null |
        python3 -c 'import json, sys
ns, name = sys.argv[1:3]
pods = json.load(sys.stdin)["pods"]
sys.exit(0 if any(p.get("namespace") == ns and p.get("name") == name and p.get("enrolled") is True for p in pods) else 1)' \
            "$NS" "$2"
}

step_workloads() {
    rm -f "$WORK/waypoint.yaml"
    printf 'sluice-smoke-%s\n' "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" >"$WORK/marker"
    kubectl delete namespace "$NS" --ignore-not-found --timeout=180s >/dev/null
    kubectl create namespace "$NS" >/dev/null
    kubectl label namespace "$NS" istio.io/dataplane-mode=ambient >/dev/null
    rm -rf "$WORK/app"
    write_app "$WORK/app"
    kubectl -n "$NS" create configmap smoke-app --from-file="$WORK/app" >/dev/null
    workloads_yaml "$(marker)" | kubectl apply -f - >/dev/null
    kubectl -n "$NS" wait --for=condition=Ready pod/server pod/client --timeout=180s >/dev/null ||
        die "the sample pods did not start"
    retry 30 enrolled "$SERVER_NODE" server || die "the agent on $SERVER_NODE does not report $NS/server enrolled"
    retry 30 enrolled "$CLIENT_NODE" client || die "the agent on $CLIENT_NODE does not report $NS/client enrolled"
}

step_traffic() {
    local ip out
    retry 60 client get "http://$SERVER_HOST/traffic" "$(marker)" >/dev/null ||
        die "client -> Service server:80 got no answer with the marker within 60 s"
    ip=$(kubectl -n "$NS" get pod server -o jsonpath='{.status.podIP}')
    client get "http://$ip:8080/traffic" "$(marker)" >/dev/null || die "client -> server pod $ip:8080 failed"
    out=$(client long "$SERVER_HOST" 9000 /nonexistent 3 traffic 2>&1) || die "TCP echo through the Service: $out"
    log "$out"
}

step_tls() {
    local id bridge pcap control records
    id=$(docker network inspect kind -f '{{.Id}}')
    bridge=br-${id:0:12}
    ip link show "$bridge" >/dev/null 2>&1 || die "no bridge $bridge for kind's network"
    # .pcap: Debian's AppArmor profile of tcpdump lets it write such files; -Z root: do not drop to
    # the tcpdump user before opening the file.
    pcap=$WORK/tls.pcap
    rm -f "$pcap"
    # Not local: the EXIT trap runs after this function returned (the step's subshell ends).
    tcpdump -i "$bridge" -nn -U -s 0 -Z root -w "$pcap" tcp 2>"$WORK/tcpdump.err" &
    tcpdump_pid=$!
    trap 'kill "$tcpdump_pid" 2>/dev/null || true' EXIT
    retry 10 grep -q listening "$WORK/tcpdump.err" || die "tcpdump did not start: $(cat "$WORK/tcpdump.err")"
    for i in 1 2 3 4 5; do
        client get "http://$SERVER_HOST/$(marker)/$i" "$(marker)" >/dev/null || die "request $i failed"
    done
    client long "$SERVER_HOST" 9000 /nonexistent 2 "$(marker)" >/dev/null || die "the TCP echo failed"
    # A control: plaintext over the same bridge outside the mesh must be seen by this capture.
    control="sluice-smoke-control-$RANDOM$RANDOM"
    curl -s -o /dev/null --max-time 5 "http://$(node_ip "$SERVER_NODE"):15020/stats/prometheus?$control" || true
    sleep 1
    kill -INT "$tcpdump_pid"
    wait "$tcpdump_pid" || true
    grep -a -q "$control" "$pcap" || die "the capture misses plaintext sent over the bridge: it would prove nothing"
    [[ -n $(tcpdump -r "$pcap" -nn 'tcp dst port 15008' 2>/dev/null | head -n1) ]] ||
        die "no traffic to port 15008 between the nodes"
    records=$(tshark -r "$pcap" -d tcp.port==15008,tls -Y 'tcp.port == 15008 && tls.record.content_type == 23' \
        2>"$WORK/tshark.err" | wc -l) || die "tshark failed: $(tail -n 3 "$WORK/tshark.err")"
    ((records > 0)) || die "no TLS application-data records on port 15008"
    if grep -a -q "$(marker)" "$pcap"; then
        die "the plaintext payload ($(marker)) is on the wire"
    fi
    log "$records TLS application-data records on port 15008; the payload is nowhere in the capture"
}

# denied: three requests in a row fail.
denied() {
    local i
    for i in 1 2 3; do
        if client get "http://$SERVER_HOST/policy/$i" "$(marker)" >/dev/null 2>&1; then
            return 1
        fi
    done
}

step_policy() {
    client get "http://$SERVER_HOST/policy" "$(marker)" >/dev/null || die "no traffic before the policy"
    kubectl apply -f - >/dev/null <<EOF
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-client
  namespace: $NS
spec:
  selector:
    matchLabels: {app: server}
  action: DENY
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/$NS/sa/client"]
EOF
    retry 30 denied || die "connections from the client still succeed 30 s after the DENY policy"
    kubectl -n "$NS" delete authorizationpolicy deny-client >/dev/null
    retry 30 client get "http://$SERVER_HOST/policy" "$(marker)" >/dev/null ||
        die "connections did not come back within 30 s of deleting the policy"
}

step_metrics() {
    local n ip lines
    for n in "${NODES[@]}"; do
        ip=$(node_ip "$n")
        curl -fsS --max-time 5 "http://$ip:15020/stats/prometheus" >"$WORK/metrics.$n" ||
            die "scraping $n ($ip:15020/stats/prometheus) failed"
    done
    lines=$(cat "$WORK"/metrics.* | grep '^istio_tcp_connections_opened_total{' || true)
    [[ -n $lines ]] || die "no istio_tcp_connections_opened_total on either node"
    grep 'destination_workload="server"' <<<"$lines" | awk '{s += $NF} END {exit !(s > 0)}' ||
        die "no istio_tcp_connections_opened_total > 0 for destination_workload=\"server\": $lines"
    log "$(grep -c . <<<"$lines") series of istio_tcp_connections_opened_total"
}

# any_gone POD...: one of the pods is being deleted, or is gone.
any_gone() {
    local p ts
    for p in "$@"; do
        ts=$(kubectl -n "$SYS" get pod "$p" -o jsonpath='{.metadata.deletionTimestamp}' 2>/dev/null) || return 0
        [[ -z $ts ]] || return 0
    done
    return 1
}

# none_left POD...: none of the pods exists any more.
none_left() {
    local p
    for p in "$@"; do
        if kubectl -n "$SYS" get pod "$p" >/dev/null 2>&1; then
            return 1
        fi
    done
}

step_upgrade() {
    local old
    mapfile -t old < <(agents)
    ((${#old[@]} == ${#NODES[@]})) || die "expected ${#NODES[@]} agents before the upgrade, found ${#old[@]}"
    kubectl -n "$NS" exec client -- rm -f /tmp/stop-long /tmp/stop-loop
    # Not local: the EXIT trap runs after this function returned (the step's subshell ends).
    client long "$SERVER_HOST" 9000 /tmp/stop-long 600 upgrade >"$WORK/long.out" 2>&1 &
    long_pid=$!
    client loop "http://$SERVER_HOST/upgrade" "$(marker)" /tmp/stop-loop 900 >"$WORK/loop.out" 2>&1 &
    loop_pid=$!
    trap 'kill "$long_pid" "$loop_pid" 2>/dev/null || true' EXIT
    sleep 5
    kubectl -n "$SYS" rollout restart daemonset/sluice-agent >/dev/null
    # The long connection lives through the first node's handover: it goes on for a while after the old
    # agent there was told to stop, and ends well within that agent's drain deadline.
    retry 180 any_gone "${old[@]}" ||
        die "no old agent was stopped within 180 s of the restart (the new pod never became ready?)"
    sleep "$LONG_AFTER_HANDOVER"
    kubectl -n "$NS" exec client -- touch /tmp/stop-long
    wait "$long_pid" || die "the long-running connection broke: $(tail -n 3 "$WORK/long.out")"
    log "$(tail -n 1 "$WORK/long.out")"
    kubectl -n "$SYS" rollout status daemonset/sluice-agent --timeout=300s >/dev/null ||
        die "the rollout did not complete within 300 s"
    sleep 3
    kubectl -n "$NS" exec client -- touch /tmp/stop-loop
    wait "$loop_pid" || die "new connections failed during the rollout: $(tr '\n' ' ' <"$WORK/loop.out")"
    log "$(head -n 1 "$WORK/loop.out")"
    # Every old agent exits once drained (the grace period is 65 s).
    retry 90 none_left "${old[@]}" || die "old agents still exist 90 s after the rollout: $(agents | tr '\n' ' ')"
    (($(agents | grep -c .) == ${#NODES[@]})) || die "expected ${#NODES[@]} agents after the upgrade: $(agents | tr '\n' ' ')"
}

# through_waypoint: an answer carries the header the waypoint's VirtualService sets.
through_waypoint() {
    client get "http://$SERVER_HOST/waypoint" "$(marker)" --headers 2>/dev/null | grep -qx 'x-sluice-waypoint: yes'
}

step_waypoint() {
    local f kinds deploy
    f=$WORK/waypoint.yaml
    "$SLUICE" waypoint generate --name waypoint --namespace "$NS" >"$f" || die "sluice waypoint generate failed"
    kinds=$(python3 -c 'import sys, yaml
print(" ".join(sorted(d["kind"] for d in yaml.safe_load_all(open(sys.argv[1])) if d)))' "$f")
    for k in ClusterRoleBinding Deployment Service ServiceAccount; do
        [[ " $kinds " == *" $k "* ]] || die "waypoint generate printed no $k (it printed: $kinds)"
    done
    # The waypoint mints its own certificate from the mesh CA (local CA mode): the secret must be in
    # the Gateway's namespace too.
    kubectl -n "$NS" create secret generic sluice-ca --from-file="$WORK/ca/ca-cert.pem" \
        --from-file="$WORK/ca/ca-key.pem" --from-file="$WORK/ca/root-cert.pem" >/dev/null ||
        die "cannot create the CA secret in $NS"
    kubectl apply -f "$f" >/dev/null
    kubectl apply -f - >/dev/null <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: $NS
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: server
  namespace: $NS
spec:
  hosts: [$SERVER_HOST]
  http:
    - headers:
        response:
          set: {x-sluice-waypoint: "yes"}
      route:
        - destination: {host: $SERVER_HOST}
EOF
    deploy=$(kubectl get -f "$f" -o name | grep '^deployment' | head -n1)
    [[ -n $deploy ]] || die "no Deployment among the generated objects"
    kubectl -n "$NS" rollout status "$deploy" --timeout=180s >/dev/null || die "the waypoint $deploy did not become ready"
    kubectl -n "$NS" label service server istio.io/use-waypoint=waypoint --overwrite >/dev/null
    retry 60 through_waypoint ||
        die "no answer through the waypoint (response header x-sluice-waypoint) within 60 s"
    kubectl -n "$NS" label service server istio.io/use-waypoint- >/dev/null
    kubectl -n "$NS" delete virtualservice server >/dev/null
    retry 30 client get "http://$SERVER_HOST/after-waypoint" "$(marker)" >/dev/null ||
        die "direct traffic did not come back after unbinding the waypoint"
}

no_agents() { [[ -z $(kubectl get pods -A -l app.kubernetes.io/name=sluice-agent -o name 2>/dev/null) ]]; }
same_cni() { [[ $(cni_snapshot "$1") == "$(cat "$WORK/cni-before.$1")" ]]; }

step_uninstall() {
    local n i
    # Nothing enrolled is left behind (pods of the mesh lose it with the agents), nor the waypoint's
    # cluster-scoped binding.
    if [[ -f $WORK/waypoint.yaml ]]; then
        kubectl delete -f "$WORK/waypoint.yaml" --ignore-not-found >/dev/null 2>&1 || true
    fi
    kubectl delete namespace "$NS" --ignore-not-found --timeout=180s >/dev/null || die "deleting $NS timed out"
    helm uninstall sluice --namespace "$SYS" >/dev/null || die "helm uninstall failed"
    retry 180 no_agents || die "agent pods remain 180 s after helm uninstall"
    kubectl wait --for=delete "namespace/$SYS" --timeout=180s >/dev/null 2>&1 || true
    for n in "${NODES[@]}"; do
        if ! retry 30 same_cni "$n"; then
            diff -u "$WORK/cni-before.$n" <(cni_snapshot "$n") | sed 's/^/     /' || true
            docker exec "$n" cat "$CONFLIST" | sed 's/^/     /' || true
            die "$n: the CNI config differs from before the install"
        fi
        if docker exec "$n" test -e "$CNI_BIN_DIR/sluice-cni"; then
            log "note: $n still has $CNI_BIN_DIR/sluice-cni (a binary, not config)"
        fi
        if docker exec "$n" test -e /sys/fs/bpf/sluice; then
            log "note: $n still has pinned state under /sys/fs/bpf/sluice (docs/install.md: uninstall)"
        fi
    done
    # The nodes keep working: a new pod starts on each.
    kubectl -n default delete pod after-uninstall-1 after-uninstall-2 --ignore-not-found >/dev/null
    i=0
    for n in "${NODES[@]}"; do
        i=$((i + 1))
        kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: after-uninstall-$i, namespace: default}
spec:
  nodeName: $n
  containers: [{name: c, image: $APP_IMAGE, command: [sleep, infinity]}]
EOF
    done
    kubectl -n default wait --for=condition=Ready pod/after-uninstall-1 pod/after-uninstall-2 --timeout=90s >/dev/null ||
        die "a new pod does not start after the uninstall (a CNI leftover?)"
    kubectl -n default delete pod after-uninstall-1 after-uninstall-2 --wait=false >/dev/null
}

# ---- runner ----

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

list() {
    printf '%-10s %-4s %s\n' STEP K8S "WHAT IT CHECKS / WHAT COVERS IT ON CI (the netns cluster of cargo xtask test)"
    for s in "${STEPS[@]}"; do
        printf '%-10s %-4s %s\n%16s%s\n' "$s" "${NEEDS_K8S[$s]}" "${WHAT[$s]}" "CI: " "${COVERED[$s]}"
    done
}

keep=0
no_k8s=0
selected=()
while (($# > 0)); do
    case $1 in
    --list)
        list
        exit 0
        ;;
    --keep) keep=1 ;;
    --no-k8s) no_k8s=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*)
        echo "smoke.sh: unknown option $1 (--help)" >&2
        exit 2
        ;;
    *)
        if [[ -z ${WHAT[$1]+set} ]]; then
            echo "smoke.sh: unknown step $1 (--list)" >&2
            exit 2
        fi
        selected+=("$1")
        ;;
    esac
    shift
done
if [[ $(id -u) != 0 ]]; then
    echo "smoke.sh: run as root (sudo)" >&2
    exit 2
fi
full=0
if ((no_k8s)); then
    for s in "${STEPS[@]}"; do
        if [[ ${NEEDS_K8S[$s]} == no ]]; then
            selected+=("$s")
        fi
    done
elif ((${#selected[@]} == 0)); then
    selected=("${STEPS[@]}")
    full=1
fi

mkdir -p "$WORK"
passed=0
failed=0
skipped=0
stopped=""
for s in "${selected[@]}"; do
    if [[ -n $stopped ]]; then
        echo "SKIP $s: set-up step $stopped failed"
        skipped=$((skipped + 1))
        continue
    fi
    echo "---- $s: ${WHAT[$s]}"
    rm -f "$WORK/reason"
    set +e
    (
        set -e
        "step_$s"
    )
    rc=$?
    set -e
    if ((rc == 0)); then
        echo "PASS $s: ${WHAT[$s]}"
        passed=$((passed + 1))
    else
        reason=$(cat "$WORK/reason" 2>/dev/null || echo "a command failed (its output is above)")
        echo "FAIL $s: $reason"
        failed=$((failed + 1))
        if [[ ${NEEDS_K8S[$s]} == yes ]]; then
            diagnostics
        fi
        if [[ -n ${SETUP[$s]+set} ]]; then
            stopped=$s
        fi
    fi
done

if ((full && !keep)); then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
fi
echo "smoke: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
