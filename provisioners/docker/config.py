"""The Docker provisioner's settings: what an operator writes in a kernelspec.

Kept apart from the provisioner's logic (``provisioner.py``) so that each reads on
its own; the provisioner class inherits these traits.
"""

from __future__ import annotations

from traitlets import Bool, CaselessStrEnum, Dict, Float, Int, List, Unicode
from traitlets.config import LoggingConfigurable

DEFAULT_IMAGE = "kernel-orchestrator/kernel-python:latest"


class DockerConfig(LoggingConfigurable):
    """Configuration of ``docker-provisioner`` kernelspecs."""

    image = Unicode(DEFAULT_IMAGE, config=True, help="Kernel image.")
    image_allowlist = List(
        Unicode(),
        config=True,
        help="Images (fnmatch patterns) a client may ask for; default: image.",
    )
    pull_policy = CaselessStrEnum(
        ["never", "if-not-present", "always"],
        "if-not-present",
        config=True,
        help="When to pull the image from its registry before a start.",
    )
    docker_host = Unicode(
        "", config=True, help="Engine URL; default $DOCKER_HOST or the local socket."
    )
    reachability = CaselessStrEnum(
        ["auto", "loopback", "published", "network", "ssh"],
        "auto",
        config=True,
        help="How clients reach the kernel's ports: auto (ssh for ssh:// engines, published"
        " for remote tcp:// engines, else loopback), loopback, published, network, ssh.",
    )
    network = Unicode(
        "",
        config=True,
        help="Docker network to attach the container to. Default: the engine's"
        " kernel-orchestrator-kernels bridge, created with inter-container traffic off, so"
        " no kernel reaches another's ports. On a network of your own the kernel's ports"
        " are reachable by that network's other members, so policy auto encrypts them.",
    )
    network_address = CaselessStrEnum(
        ["ip", "name"],
        "ip",
        config=True,
        help="With reachability=network: connect by container IP or by container name (DNS).",
    )
    egress = CaselessStrEnum(
        ["isolated", "unmanaged"],
        "isolated",
        config=True,
        help="isolated: on the engine's kernel bridge, kernels reach neither the engine"
        " host nor private, link-local (cloud metadata) or reserved addresses, only the"
        " public internet and egress_allow (firewall rules the orchestrator applies; it"
        " must run as root beside the engine). unmanaged: the operator firewalls the"
        " engine host.",
    )
    egress_allow = List(
        Unicode(),
        config=True,
        help="IPv4 networks (CIDR) kernels may reach despite egress=isolated, e.g. a"
        " package mirror at 10.2.0.5/32.",
    )
    volumes = List(
        Unicode(),
        config=True,
        help="Mounts as 'source:target[:ro|:rw]'; {username} (in source and target) is the"
        " gateway user's name: a named volume is created for each user on first use, a"
        " bind source must lie under volume_roots (see provisioners.docker.volumes).",
    )
    volume_roots = List(
        Unicode(),
        config=True,
        help="Directories of the engine host under which bind-mount sources may lie.",
    )
    environment = Dict(config=True, help="Fixed environment for the kernel.")
    env_allowlist = List(
        Unicode(),
        ["KERNEL_*"],
        config=True,
        help="Names (fnmatch) of client variables passed to the kernel.",
    )
    cpus = Float(
        2.0, config=True, help="CPU limit (0: none; the default keeps one kernel from all cores)."
    )
    memory = Unicode("2g", config=True, help="Memory limit like 4g ('' : none; the default is 2g).")
    disk = Unicode(
        "auto",
        config=True,
        help="Cap on the container's writable layer, like 20g (Docker's storage-opt size),"
        " so one kernel cannot fill the engine's disk. 'auto': 10g where the engine's"
        " storage driver can enforce it (overlay2 on xfs with pquota, btrfs, zfs), none"
        " elsewhere; '': none. An explicit size on an engine that cannot enforce it is"
        " refused.",
    )
    pids_limit = Int(
        1024, config=True, help="Most processes and threads the kernel may run (at least 16)."
    )
    gpus = Int(0, config=True, help="GPUs to request (-1: all).")
    gpu_driver = Unicode("", config=True, help="Device driver for GPUs ('' : engine default).")
    user = Unicode("1000:1000", config=True, help="uid:gid the kernel runs as.")
    working_dir = Unicode("", config=True, help="The kernel's working directory in the container.")
    labels = Dict(config=True, help="Extra container labels.")
    init = Bool(
        False,
        config=True,
        help="Run Docker's init as PID 1 (for images without their own, e.g. tini).",
    )
    startup_timeout = Float(
        60.0, config=True, help="Seconds from container start until the kernel must answer."
    )
    max_startup_timeout = Float(
        600.0, config=True, help="Cap on a client's KERNEL_STARTUP_TIMEOUT override."
    )
    max_cpus = Float(0.0, config=True, help="Cap on KERNEL_CPUS (0: no cap).")
    max_memory = Unicode("", config=True, help="Cap on KERNEL_MEMORY ('' : no cap).")
    allowed_overrides = List(
        Unicode(),
        ["image", "startup_timeout"],
        config=True,
        help="Settings a client may override (image, cpus, memory, working_dir, startup_timeout).",
    )
    transport_encryption = Unicode(
        "",
        config=True,
        help="CurveZMQ: auto (encrypt when traffic leaves the machine), required, disabled;"
        " '' : the orchestrator's setting.",
    )
    publish_address = Unicode(
        "0.0.0.0",
        config=True,
        help="With reachability=published: the engine host interface ports are published on.",
    )
    ssh_destination = Unicode(
        "", config=True, help="With reachability=ssh: ssh://user@host of the engine host."
    )
