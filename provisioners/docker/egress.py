"""What a Docker kernel may reach beyond its own container: not the engine host, not
private or link-local networks, unless the operator says so.

A kernel runs a tenant's code. On a Docker bridge it can open connections to the
engine host itself (the bridge's gateway address and every other address of the
host: the gateway's port, PostgreSQL, a Docker TCP socket) and, through the host's
NAT, to any network the host reaches: the cloud's metadata service at
169.254.169.254 (the host's credentials), the store's database, other internal
services. Docker has no setting that stops either on a bridge, so the kernels' bridge
gets two chains of firewall rules on the engine host:

* ``KO-KERNEL-HOST`` (from ``INPUT``, for packets from the bridge): replies to
  connections the host opened pass (the orchestrator and ``docker-proxy`` reaching
  the kernel's ports); every new connection to the host is rejected;
* ``KO-KERNEL-EGRESS`` (from ``DOCKER-USER``, Docker's hook at the top of
  ``FORWARD``): replies pass, the operator's ``egress_allow`` networks pass, and the
  private, shared, loopback, link-local, benchmarking, multicast and reserved IPv4
  ranges are rejected; the public internet stays reachable (``pip install``).

Rules are applied by the orchestrator when the engine is this machine's and it runs
as root, and checked again on every start (idempotent, safe for several processes).
They serve every kernel of the engine, so all its kernelspecs must allow the same
networks.
A remote engine cannot be reached that way: the provisioner then refuses to start
kernels, naming ``egress`` (``unmanaged``: the operator firewalls the engine host).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable

from orchestrator.errors import OrchestratorError
from orchestrator.forks import reset_in_child

HOST_CHAIN = "KO-KERNEL-HOST"
EGRESS_CHAIN = "KO-KERNEL-EGRESS"
#: Where a kernel never goes unless allowed: every IPv4 range that is not the public
#: internet (RFC 6890), the metadata service's link-local range included.
BLOCKED_NETWORKS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
REJECT = ("-j", "REJECT", "--reject-with", "icmp-admin-prohibited")
_lock = threading.Lock()


class EgressError(OrchestratorError):
    """The kernels' network cannot be fenced as configured."""


def check_networks(values: Iterable[str], setting: str) -> list[str]:
    """``values`` as canonical IPv4 networks, or an EgressError naming ``setting``."""
    networks = []
    for value in values:
        try:
            network = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            raise EgressError(f"{setting}: {value!r} is not a network (e.g. 10.2.0.0/16)") from None
        if network.version != 4:
            raise EgressError(f"{setting}: {value!r}: only IPv4 networks are fenced")
        networks.append(str(network))
    return networks


def can_manage(engine_url: str) -> str:
    """Why this process cannot fence the engine's bridge ('' if it can)."""
    if not engine_url.startswith("unix://"):
        return f"the engine {engine_url} is not this machine's"
    if os.geteuid() != 0:
        return "this process does not run as root"
    if shutil.which("iptables") is None:
        return "iptables is not installed here"
    return ""


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["iptables", "-w", "10", *args], capture_output=True, text=True, timeout=30
    )
    if check and done.returncode != 0:
        raise EgressError(f"iptables {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _hook(parent: str, bridge: str, chain: str) -> None:
    rule = ("-i", bridge, "-j", chain)
    if _iptables("-C", parent, *rule, check=False).returncode != 0:
        _iptables("-I", parent, "1", *rule)


def _chain(name: str, rules: list[list[str]]) -> None:
    if _iptables("-n", "-L", name, check=False).returncode != 0:
        _iptables("-N", name)
    _iptables("-F", name)
    for rule in rules:
        _iptables("-A", name, *rule)


def _allowed_now() -> set[str] | None:
    """The networks the egress chain lets through now (None: no chain yet)."""
    done = _iptables("-S", EGRESS_CHAIN, check=False)
    if done.returncode != 0:
        return None
    allowed = set()
    for line in done.stdout.splitlines():
        words = line.split()
        if words[:2] == ["-A", EGRESS_CHAIN] and words[-2:] == ["-j", "RETURN"] and "-d" in words:
            allowed.add(words[words.index("-d") + 1])
    return allowed


def _intact() -> bool:
    """Whether the egress chain is built (its metadata rule stands): a firewall reload
    (firewalld, ``iptables -F``) may have emptied or removed it since."""
    rule = ("-d", "169.254.0.0/16", *REJECT)
    return _iptables("-C", EGRESS_CHAIN, *rule, check=False).returncode == 0


def fence(bridge: str, allowed: list[str]) -> None:
    """Make sure the rules for ``bridge`` stand, letting ``allowed`` networks through.

    Checked on every start (a few ``iptables -C``), so rules a reload dropped come back.
    The chains serve every kernel on the engine: kernelspecs that allow different
    networks are refused (one would widen the other's), whichever process made them.
    """
    with _lock:
        if _intact():
            now = _allowed_now()
            if now != set(allowed):
                raise EgressError(
                    f"DockerProvisioner.egress_allow {sorted(allowed)} differs from the networks"
                    f" the engine's kernel firewall lets through already ({sorted(now or ())}):"
                    " every kernelspec on one engine must allow the same networks (to change"
                    f" them, empty the chains first: iptables -F {EGRESS_CHAIN};"
                    f" iptables -F {HOST_CHAIN})"
                )
        else:
            if _iptables("-n", "-L", "DOCKER-USER", check=False).returncode != 0:
                raise EgressError(
                    "the engine's firewall has no DOCKER-USER chain (dockerd runs with"
                    " --iptables=false?): kernels' egress cannot be fenced"
                )
            replies = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]
            passed = [["-d", net, "-j", "RETURN"] for net in allowed]
            _chain(
                EGRESS_CHAIN,
                [replies, *passed, *(["-d", net, *REJECT] for net in BLOCKED_NETWORKS)],
            )
            _chain(HOST_CHAIN, [replies, *passed, list(REJECT)])
        _hook("DOCKER-USER", bridge, EGRESS_CHAIN)
        _hook("INPUT", bridge, HOST_CHAIN)


@reset_in_child
def _reset_after_fork() -> None:
    """A lock another thread of the parent may have held at the fork."""
    global _lock
    _lock = threading.Lock()
