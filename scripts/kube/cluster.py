"""A real single-node Kubernetes cluster on this machine, for the tests and benchmarks.

Everything runs as plain processes started here and recorded in the state directory,
so ``down`` can stop exactly what ``up`` started:

    etcd  <-TLS-  kube-apiserver  <-TLS-  controller-manager, scheduler, kubelet
                         |                                       |
                         +--TLS (kubelet client cert)-->  kubelet :PORT on the node IP
                                                                 |
                                                   private containerd (CRI) + CNI bridge

Security is a real cluster's: one CA of our own, every component with its own client
certificate, ``Node,RBAC`` authorization, ``NodeRestriction`` and PodSecurity
admission, anonymous requests refused, etcd behind client-certificate TLS.

The node IP lives on a bridge we create (``ko-cni0``), so the API server reaches the
kubelet, and this machine reaches pod IPs, without touching any other network. An
audit log (``logs/audit.log``, JSON lines) records every request: the tests count
watches and port-forwards from it and the benchmark counts API requests per start.

Standard library only: it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

STATE = Path(os.environ.get("KUBE_STATE", "/var/lib/kernel-orchestrator-kube"))
PKI, LOGS, PIDS = STATE / "pki", STATE / "logs", STATE / "pids"
ADMIN_KUBECONFIG = STATE / "admin.kubeconfig"
INFO = STATE / "cluster.json"

NODE_NAME = "ko-node"
BRIDGE = "ko-cni0"
POD_SUBNET, NODE_IP = "10.244.0.0/24", "10.244.0.1"
SERVICE_RANGE, SERVICE_IP = "10.0.0.0/24", "10.0.0.1"
PAUSE_IMAGE = "kernel-orchestrator.test/pause:3.10.1"
# The conformance matrix runs IRkernel, bash_kernel and xeus-python in pods too.
KERNEL_IMAGES = (
    "kernel-orchestrator/kernel-python:latest",
    "kernel-orchestrator/kernel-multi:latest",
    "kernel-orchestrator/kernel-r:latest",
)
CGROUP_ROOT = "/ko-kubelet"
# Starting order; ``down`` stops them in reverse.
COMPONENTS = ("etcd", "containerd", "kube-apiserver", "kube-controller-manager",
              "kube-scheduler", "kubelet")
REPO = Path(__file__).resolve().parents[2]


def say(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def run(*argv: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_file(path: Path, text: str) -> None:
    """Write ``text`` readable by root only: keys and kubeconfigs are secrets."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# ------------------------------------------------------------------ certificates
def issue(name: str, cn: str, org: str = "", *, sans: tuple[str, ...] = (),
          usage: str = "clientAuth") -> None:
    """An ECDSA key and a certificate signed by the cluster CA, in ``pki/``."""
    key, crt, csr = PKI / f"{name}.key", PKI / f"{name}.crt", PKI / f"{name}.csr"
    subj = f"/CN={cn}" + (f"/O={org}" if org else "")
    run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subj)
    ext = [f"extendedKeyUsage={usage}", "keyUsage=critical,digitalSignature,keyEncipherment",
           "basicConstraints=critical,CA:FALSE"]
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    with tempfile.NamedTemporaryFile("w", suffix=".ext", dir=PKI) as f:
        f.write("\n".join(ext) + "\n")
        f.flush()
        run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(PKI / "ca.crt"),
            "-CAkey", str(PKI / "ca.key"), "-CAcreateserial", "-days", "30",
            "-out", str(crt), "-extfile", f.name)
    csr.unlink()
    os.chmod(key, 0o600)


def make_pki() -> None:
    PKI.mkdir(parents=True, exist_ok=True, mode=0o700)
    old_umask = os.umask(0o077)  # keys are born private ...
    try:
        _make_pki()
    finally:
        os.umask(old_umask)  # ... but containerd must unpack images as they are


def _make_pki() -> None:
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(PKI / "ca.key"), "-out", str(PKI / "ca.crt"), "-days", "30",
        "-subj", "/CN=kernel-orchestrator test cluster CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    local = ("DNS:localhost", "IP:127.0.0.1")
    # etcd's gRPC gateway dials etcd itself with this certificate: both usages.
    issue("etcd-server", "etcd", sans=local, usage="serverAuth,clientAuth")
    issue("apiserver-etcd", "kube-apiserver-etcd-client")
    issue("apiserver", "kube-apiserver", usage="serverAuth",
          sans=(*local, f"IP:{SERVICE_IP}", "DNS:kubernetes", "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc"))
    issue("apiserver-kubelet", "kube-apiserver-kubelet-client")
    issue("admin", "kernel-orchestrator-admin", "system:masters")
    issue("controller-manager", "system:kube-controller-manager")
    issue("scheduler", "system:kube-scheduler")
    issue("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
    issue("kubelet-serving", f"system:node:{NODE_NAME}", "system:nodes", usage="serverAuth",
          sans=(f"IP:{NODE_IP}", f"DNS:{NODE_NAME}"))
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(PKI / "sa.key"))
    run("openssl", "pkey", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub"))


def kubeconfig(path: Path, server: str, cert: str) -> None:
    """A kubeconfig (JSON is YAML) for the client certificate ``cert``."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "ko",
        "clusters": [{"name": "ko", "cluster": {
            "server": server, "certificate-authority": str(PKI / "ca.crt")}}],
        "users": [{"name": cert, "user": {
            "client-certificate": str(PKI / f"{cert}.crt"),
            "client-key": str(PKI / f"{cert}.key")}}],
        "contexts": [{"name": "ko", "context": {"cluster": "ko", "user": cert}}],
    }
    private_file(path, json.dumps(doc, indent=1) + "\n")


# ------------------------------------------------------------------ processes
def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start ``argv`` in its own session, logging to ``logs/NAME.log``; record its pid."""
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, env={**os.environ, **(env or {})},
                            umask=0o022)
    log.close()
    (PIDS / name).write_text(str(proc.pid))
    (PIDS / f"{name}.argv").write_text(json.dumps(argv))


def restart(name: str) -> None:
    """Stop component ``name`` and start it again as it was (the tests restart the API
    server to see watches survive it); waits until the API server is ready again."""
    argv = json.loads((PIDS / f"{name}.argv").read_text())
    stop(name)
    start(name, argv)
    info = json.loads(INFO.read_text())
    wait_for("the API server", lambda: api_ready(info), 120, "kube-apiserver")


def alive(name: str) -> bool:
    try:
        pid = int((PIDS / name).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    try:  # a zombie of ours is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def log_tail(name: str, lines: int = 15) -> str:
    try:
        return "\n".join((LOGS / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(what: str, check: Any, timeout: float, component: str | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except Exception:  # noqa: BLE001 - not ready yet
            got = None
        if got:
            return got
        if component and not alive(component):
            raise SystemExit(f"cluster: {component} exited while waiting for {what}:\n"
                             f"{log_tail(component)}")
        if time.monotonic() > deadline:
            tail = f":\n{log_tail(component)}" if component else ""
            raise SystemExit(f"cluster: timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(0.25)


def stop(name: str, grace: float = 10.0) -> None:
    try:
        pid = int((PIDS / name).read_text())
    except (OSError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_running(pid):
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    (PIDS / name).unlink(missing_ok=True)
    (PIDS / f"{name}.argv").unlink(missing_ok=True)


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------ API calls
def api(info: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    """One request to the API server as the admin (system:masters)."""
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(info["server"] + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    return json.loads(text) if text.startswith("{") else text


def api_ready(info: dict[str, Any]) -> bool:
    return api(info, "GET", "/readyz") == "ok"


def node_ready(info: dict[str, Any]) -> bool:
    """Ready, and schedulable: the node lifecycle controller removes the not-ready taint
    a moment after the kubelet reports Ready, and a pod scheduled in between fails as
    Unschedulable (untolerated taint)."""
    node = api(info, "GET", f"/api/v1/nodes/{NODE_NAME}")
    ready = any(c["type"] == "Ready" and c["status"] == "True"
                for c in node["status"].get("conditions", []))
    blocking = [t for t in node["spec"].get("taints") or []
                if t.get("effect") in ("NoSchedule", "NoExecute")]
    return ready and not blocking


def default_service_account(info: dict[str, Any]) -> bool:
    return bool(api(info, "GET", "/api/v1/namespaces/default/serviceaccounts/default"))


# ------------------------------------------------------------------ the node
def ensure_packages() -> None:
    need = []
    if not Path("/usr/lib/cni/bridge").exists():
        need.append("containernetworking-plugins")
    if not shutil.which("containerd") or not shutil.which("ctr"):
        need.append("containerd")
    if not shutil.which("runc"):
        need.append("runc")
    if not shutil.which("openssl"):
        need.append("openssl")
    if need:
        say(f"installing {' '.join(need)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", *need], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        if Path("/usr/lib/cni/bridge").exists() is False:
            subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", *need], check=True, env=env,
                           stdout=subprocess.DEVNULL)


def make_bridge() -> None:
    """The node's network: a bridge holding the node IP, the gateway of the pod subnet."""
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    # Docker's FORWARD policy is DROP, which also drops bridged pod-to-pod traffic.
    for flag in ("-i", "-o"):
        rule = ["FORWARD", flag, BRIDGE, "-j", "ACCEPT"]
        if run("iptables", "-C", *rule, check=False).returncode != 0:
            run("iptables", "-I", *rule)


def remove_bridge() -> None:
    for flag in ("-i", "-o"):
        while run("iptables", "-D", "FORWARD", flag, BRIDGE, "-j", "ACCEPT",
                  check=False).returncode == 0:
            pass
    run("ip", "link", "del", BRIDGE, check=False)


def write_cni_config() -> Path:
    conf_dir = STATE / "cni" / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0", "name": "ko-kube",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
            "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(STATE / "cni" / "ipam"),
                     "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]]},
        }],
    }
    (conf_dir / "10-ko-kube.conflist").write_text(json.dumps(conflist, indent=1))
    return conf_dir


def write_containerd_config(cni_conf: Path) -> Path:
    root = STATE / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  tolerate_missing_hugepages_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # This sandbox may not lower an OOM score; containerd then keeps pods' at its own.
  restrict_oom_score_adj = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{root}/runc"
[{cri}.registry]
  # Tests may send traffic only to this machine: every registry is a loopback port
  # where nothing listens, so an image that is not here fails at once.
  config_path = "{root}/registries"
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni_conf}"
"""
    path = root / "config.toml"
    root.mkdir(parents=True, exist_ok=True)
    for registry in ("_default", "docker.io", "registry.k8s.io", "ghcr.io", "quay.io"):
        hosts = root / "registries" / registry / "hosts.toml"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text('server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:9"]\n'
                         '  capabilities = ["pull", "resolve"]\n')
    path.write_text(text)
    return path


def ctr(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run("ctr", "--address", str(STATE / "containerd" / "containerd.sock"),
               "--namespace", "k8s.io", *args, **kw)


def pause_source(bin_dir: Path) -> Path:
    """pause.c from the pinned k8s.io/kubernetes module in Go's module cache."""
    version = bin_dir.name.removeprefix("bin-")
    mod = bin_dir.parent / "go" / "mod" / "k8s.io" / f"kubernetes@{version}"
    src = mod / "build" / "pause" / "linux" / "pause.c"
    if not src.exists():
        raise SystemExit(f"cluster: {src} is missing (run scripts/kube/build.sh)")
    return src


def build_pause_image(bin_dir: Path) -> None:
    """Kubernetes' own pause binary, built statically, as a one-file image."""
    if run("docker", "image", "inspect", PAUSE_IMAGE, check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        run("gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=v3.10.1-kernel-orchestrator",
            "-o", f"{tmp}/pause", str(pause_source(bin_dir)))
        run("strip", f"{tmp}/pause")
        Path(tmp, "Dockerfile").write_text('FROM scratch\nADD pause /pause\nENTRYPOINT ["/pause"]\n')
        run("docker", "build", "-q", "-t", PAUSE_IMAGE, tmp)


def import_images() -> None:
    """Make the pause image and the project's kernel images available to the node."""
    have = ctr("images", "list", "-q").stdout.split()
    for image in (PAUSE_IMAGE, *KERNEL_IMAGES):
        ref = image if "/" in image.split("/")[0] and "." in image.split("/")[0] else \
            f"docker.io/{image}"
        docker_id = run("docker", "image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
        marker = STATE / "images" / docker_id.replace(":", "_")
        if ref in have and marker.exists():
            continue
        started = time.monotonic()
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["ctr", "--address", str(STATE / "containerd" / "containerd.sock"),
                        "--namespace", "k8s.io", "images", "import", "--no-unpack", "-"],
                       stdin=save.stdout, check=True, stdout=subprocess.DEVNULL)
        if save.wait() != 0:
            raise SystemExit(f"cluster: docker save {image} failed")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        say(f"imported {image} into the node in {time.monotonic() - started:.1f} s")


def ensure_kernel_images() -> None:
    """The kernel images the tests use, built by docker/build.sh if missing."""
    missing = [i for i in KERNEL_IMAGES
               if run("docker", "image", "inspect", i, check=False).returncode != 0]
    for image in missing:
        say(f"building {image}")
        name = image.split("/", 1)[1].split(":", 1)[0]
        subprocess.run(["bash", str(REPO / "docker" / "build.sh"), "--offline-base", "--only",
                        name], check=True, stdout=subprocess.DEVNULL)


def kubelet_config(port: int) -> Path:
    cfg = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": port, "readOnlyPort": 0, "healthzPort": 0,
        "tlsCertFile": str(PKI / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(PKI / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(PKI / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{STATE / 'containerd' / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs", "cgroupRoot": CGROUP_ROOT, "failCgroupV1": False,
        "failSwapOn": False, "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%",
                         "imagefs.available": "0%"},
        "serializeImagePulls": False, "maxPods": 110, "resolvConf": "/etc/resolv.conf",
        "registerNode": True, "nodeStatusReportFrequency": "1m",
        "shutdownGracePeriod": "0s",
    }
    path = STATE / "kubelet-config.json"
    private_file(path, json.dumps(cfg, indent=1))
    return path


# ------------------------------------------------------------------ up / down
def up(bin_dir: Path) -> None:
    if os.geteuid() != 0:
        raise SystemExit("cluster: needs root (kubelet, containerd and CNI)")
    if INFO.exists() and all(alive(c) for c in COMPONENTS):
        info = json.loads(INFO.read_text())
        if api_ready(info) and node_ready(info):
            import_images()
            print(ADMIN_KUBECONFIG)
            return
    if INFO.exists() or PIDS.exists():
        say("an earlier cluster is (partly) there: taking it down first")
        down()
    started = time.monotonic()
    ensure_packages()
    ensure_kernel_images()
    build_pause_image(bin_dir)
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(STATE, 0o700)
    make_pki()
    ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kubelet")}
    info = {"server": f"https://127.0.0.1:{ports['apiserver']}", "ports": ports,
            "node": NODE_NAME, "node_ip": NODE_IP, "bin": str(bin_dir),
            "audit_log": str(LOGS / "audit.log"), "ca": str(PKI / "ca.crt"),
            "pod_subnet": POD_SUBNET, "version": bin_dir.name.removeprefix("bin-")}
    private_file(INFO, json.dumps(info, indent=1))
    server = info["server"]
    kubeconfig(ADMIN_KUBECONFIG, server, "admin")
    for comp in ("controller-manager", "scheduler", "kubelet"):
        kubeconfig(STATE / f"{comp}.kubeconfig", server, comp)

    etcd_url = f"https://127.0.0.1:{ports['etcd']}"
    start("etcd", [
        str(bin_dir / "etcd"), "--name", "ko", "--data-dir", str(STATE / "etcd"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
        "--initial-cluster", f"ko=http://127.0.0.1:{ports['etcd_peer']}",
        "--cert-file", str(PKI / "etcd-server.crt"), "--key-file", str(PKI / "etcd-server.key"),
        "--client-cert-auth", "--trusted-ca-file", str(PKI / "ca.crt"),
        "--unsafe-no-fsync", "--log-level", "warn", "--listen-metrics-urls", "",
    ])

    cni_conf = write_cni_config()
    make_bridge()
    start("containerd", ["containerd", "--config", str(write_containerd_config(cni_conf))])

    audit_policy = STATE / "audit-policy.json"
    audit_policy.write_text(json.dumps({
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
        "rules": [
            # Pod bodies are kept, so the tests can show that no key is in them; Secret
            # bodies never are: the audit log must not hold what it audits.
            {"level": "Request", "resources": [{"group": "", "resources": ["pods"]}],
             "verbs": ["create", "update", "patch"]},
            {"level": "Metadata"},
        ]}))
    start("kube-apiserver", [
        str(bin_dir / "kube-apiserver"),
        "--bind-address", "127.0.0.1", "--secure-port", str(ports["apiserver"]),
        "--etcd-servers", etcd_url, "--etcd-cafile", str(PKI / "ca.crt"),
        "--etcd-certfile", str(PKI / "apiserver-etcd.crt"),
        "--etcd-keyfile", str(PKI / "apiserver-etcd.key"),
        "--tls-cert-file", str(PKI / "apiserver.crt"),
        "--tls-private-key-file", str(PKI / "apiserver.key"),
        "--client-ca-file", str(PKI / "ca.crt"), "--anonymous-auth=false",
        "--kubelet-client-certificate", str(PKI / "apiserver-kubelet.crt"),
        "--kubelet-client-key", str(PKI / "apiserver-kubelet.key"),
        "--kubelet-certificate-authority", str(PKI / "ca.crt"),
        "--kubelet-preferred-address-types", "InternalIP",
        "--service-account-issuer", "https://kubernetes.default.svc",
        "--service-account-key-file", str(PKI / "sa.pub"),
        "--service-account-signing-key-file", str(PKI / "sa.key"),
        "--service-cluster-ip-range", SERVICE_RANGE, "--endpoint-reconciler-type", "none",
        "--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
        "--allow-privileged=false", "--profiling=false",
        "--audit-policy-file", str(audit_policy), "--audit-log-path", str(LOGS / "audit.log"),
        "--audit-log-format", "json", "--audit-log-maxbackup", "1", "--audit-log-maxsize", "500",
    ])
    wait_for("the API server", lambda: api_ready(info), 120, "kube-apiserver")
    # The API server's own client identity may use the kubelet API (logs, exec,
    # port-forward), as kubeadm and local-up-cluster grant it.
    api(info, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": "kube-apiserver-kubelet-api-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:kubelet-api-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": "kube-apiserver-kubelet-client"}]})

    start("kube-controller-manager", [
        str(bin_dir / "kube-controller-manager"),
        "--kubeconfig", str(STATE / "controller-manager.kubeconfig"),
        "--service-account-private-key-file", str(PKI / "sa.key"),
        "--root-ca-file", str(PKI / "ca.crt"), "--use-service-account-credentials",
        "--leader-elect=false", "--secure-port", "0", "--controllers", "*",
        "--concurrent-gc-syncs", "5", "--profiling=false",
    ])
    sched_cfg = STATE / "scheduler-config.json"
    sched_cfg.write_text(json.dumps({
        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(STATE / "scheduler.kubeconfig"),
                             "qps": 100, "burst": 200},
        "leaderElection": {"leaderElect": False}}))
    start("kube-scheduler", [str(bin_dir / "kube-scheduler"), "--config", str(sched_cfg),
                             "--secure-port", "0", "--profiling=false"])

    wait_for("containerd", lambda: ctr("version").returncode == 0, 60, "containerd")
    import_images()
    make_cgroups()
    save_sysctls()
    start("kubelet", [
        str(bin_dir / "kubelet"), "--config", str(kubelet_config(ports["kubelet"])),
        "--kubeconfig", str(STATE / "kubelet.kubeconfig"), "--root-dir", str(STATE / "kubelet"),
        "--hostname-override", NODE_NAME, "--node-ip", NODE_IP, "--v", "1",
    ])
    wait_for("the node to be Ready", lambda: node_ready(info), 180, "kubelet")
    wait_for("the default ServiceAccount", lambda: default_service_account(info), 60,
             "kube-controller-manager")
    say(f"up in {time.monotonic() - started:.1f} s: Kubernetes {info['version']}, "
        f"API {server}, node {NODE_NAME} ({NODE_IP}), real kubelet on containerd")
    print(ADMIN_KUBECONFIG)


def our_shims() -> list[int]:
    """Every containerd shim of our containerd (found by its socket in their argv)."""
    sock = str(STATE / "containerd" / "containerd.sock")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and sock.encode() in argv:
            found.append(int(proc.name))
    return found


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        for kid in kids.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def unmount_under(*roots: Path) -> None:
    prefixes = tuple(str(r) + "/" for r in roots)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefixes)), key=len, reverse=True):
        run("umount", "-l", point, check=False)


# The kubelet tunes these at start (panic on oops, overcommit, ...); ``down`` puts this
# machine's own values back.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes")
SYSCTLS_SAVED = Path("/run/kernel-orchestrator-kube.sysctls.json")


def save_sysctls() -> None:
    if SYSCTLS_SAVED.exists():  # an earlier up's originals, not restored yet
        return
    values = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = (Path("/proc/sys") / key).read_text().strip()
    SYSCTLS_SAVED.write_text(json.dumps(values))


def restore_sysctls() -> None:
    if not SYSCTLS_SAVED.exists():
        return
    for key, value in json.loads(SYSCTLS_SAVED.read_text()).items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value)
    SYSCTLS_SAVED.unlink()


def remove_kubelet_iptables() -> None:
    """The chains the kubelet makes (KUBE-FIREWALL and its canaries), v4 and v6."""
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle"):
            listing = run(tool, "-t", table, "-S", check=False).stdout.splitlines()
            for line in listing:
                parts = line.split()
                if parts[:1] == ["-A"] and "-j" in parts and \
                        parts[parts.index("-j") + 1].startswith("KUBE-") and \
                        not parts[1].startswith("KUBE-"):
                    run(tool, "-t", table, "-D", *parts[1:], check=False)
            for line in listing:
                parts = line.split()
                if parts[:1] == ["-N"] and parts[1].startswith("KUBE-"):
                    run(tool, "-t", table, "-F", parts[1], check=False)
            for line in listing:
                parts = line.split()
                if parts[:1] == ["-N"] and parts[1].startswith("KUBE-"):
                    run(tool, "-t", table, "-X", parts[1], check=False)


def make_cgroups() -> None:
    """The kubelet's cgroup root, in every v1 hierarchy (the kubelet does not make it)."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        if controller.name == "unified" or not (controller / "cgroup.procs").exists():
            continue
        top = controller / CGROUP_ROOT.lstrip("/")
        top.mkdir(exist_ok=True)
        if controller.name == "cpuset":  # an empty cpuset admits no task
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (top / knob).write_text((controller / knob).read_text())


def remove_cgroups() -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / CGROUP_ROOT.lstrip("/")
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(str(p)),
                        reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


def pod_netns() -> list[str]:
    """Network namespaces our containerd made for pods (recorded in its sandboxes)."""
    root = STATE / "containerd"
    names = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1]
        if point.startswith(("/run/netns/cni-", "/var/run/netns/cni-")):
            names.append(point)
    # Only those whose sandbox belongs to us: containerd records the path in its db,
    # which we cannot read without bbolt; but no other CRI runs here, and Docker keeps
    # its namespaces under /var/run/docker/netns.
    return names if root.exists() else []


def down() -> None:
    info = json.loads(INFO.read_text()) if INFO.exists() else None
    if info and alive("kube-apiserver") and alive("kubelet"):
        # Let the kubelet tear pods down properly (CNI DEL, volumes), briefly.
        try:
            pods = api(info, "GET", "/api/v1/pods")["items"]
            for pod in pods:
                md = pod["metadata"]
                api(info, "DELETE", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}"
                    "?gracePeriodSeconds=0")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and api(info, "GET", "/api/v1/pods")["items"]:
                time.sleep(0.5)
        except Exception as exc:  # noqa: BLE001 - best effort, the hard way follows
            say(f"could not drain pods through the API ({exc}); killing them")
    netns = pod_netns()
    for name in reversed(COMPONENTS):
        if name == "containerd":
            for shim in our_shims():
                for pid in descendants(shim):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    os.kill(shim, signal.SIGKILL)
                except OSError:
                    pass
        stop(name)
    for path in netns:
        run("umount", "-l", path, check=False)
        Path(path).unlink(missing_ok=True)
    unmount_under(STATE)
    remove_cgroups()
    remove_bridge()
    remove_kubelet_iptables()
    restore_sysctls()
    shutil.rmtree(STATE, ignore_errors=True)
    say("down: every component stopped and its state removed")


def status() -> None:
    if not (INFO.exists() and all(alive(c) for c in COMPONENTS)):
        raise SystemExit("cluster: not up")
    info = json.loads(INFO.read_text())
    if not (api_ready(info) and node_ready(info)):
        raise SystemExit("cluster: up but not ready")
    print(ADMIN_KUBECONFIG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status", "restart"))
    parser.add_argument("component", nargs="?", choices=COMPONENTS, help="for restart")
    parser.add_argument("--bin", type=Path, help="directory of the built binaries (build.sh)")
    args = parser.parse_args()
    if args.action == "up":
        if not args.bin:
            parser.error("up needs --bin (use cluster.sh, which builds them)")
        up(args.bin)
    elif args.action == "down":
        down()
    elif args.action == "restart":
        if not args.component:
            parser.error("restart needs a component")
        restart(args.component)
    else:
        status()


if __name__ == "__main__":
    main()
