"""``kernel-orchestrator kernelspec install docker-provisioner``: its options."""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_IMAGE
from .settings import memory_bytes


def add_arguments(parser: Any) -> None:
    """The docker-provisioner options of ``kernelspec install``."""
    g = parser.add_argument_group("docker-provisioner")
    g.add_argument("--image", default=DEFAULT_IMAGE, help="kernel image")
    g.add_argument(
        "--allow-image",
        action="append",
        default=[],
        metavar="PATTERN",
        help="image a client may ask for with KERNEL_IMAGE (repeatable)",
    )
    g.add_argument("--docker-host", default="", help="engine URL (default: $DOCKER_HOST)")
    g.add_argument(
        "--reachability",
        choices=["auto", "loopback", "published", "network", "ssh"],
        default="auto",
    )
    g.add_argument("--network", default="", help="Docker network for the container")
    g.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="mount (repeatable); {username} allowed: a per-user named volume, or a bind"
        " mount of the user's directory under a --volume-root",
    )
    g.add_argument(
        "--volume-root",
        action="append",
        default=[],
        metavar="DIR",
        help="engine-host directory under which bind-mount sources may lie (repeatable)",
    )
    g.add_argument("--cpus", type=float, default=0.0)
    g.add_argument("--memory", default="", help="memory limit, e.g. 2g")
    g.add_argument("--gpus", type=int, default=0, help="GPUs to request (-1: all)")
    g.add_argument("--container-user", default="1000:1000", help="numeric uid:gid")
    g.add_argument("--working-dir", default="")
    g.add_argument("--startup-timeout", type=float, default=60.0)
    g.add_argument(
        "--pull-policy", choices=["never", "if-not-present", "always"], default="if-not-present"
    )


def config_from(args: Any) -> dict[str, Any]:
    """The kernelspec's provisioner config for those options (only what differs from the
    defaults)."""
    config: dict[str, Any] = {"image": args.image}
    if args.allow_image:
        config["image_allowlist"] = [args.image, *args.allow_image]
    for key in ("docker_host", "network", "working_dir"):
        if getattr(args, key):
            config[key] = getattr(args, key)
    if args.memory:
        memory_bytes(args.memory)
        config["memory"] = args.memory
    for key, default in (("cpus", 0.0), ("gpus", 0), ("startup_timeout", 60.0)):
        if getattr(args, key) != default:
            config[key] = getattr(args, key)
    if args.volume:
        config["volumes"] = args.volume
    if args.volume_root:
        config["volume_roots"] = args.volume_root
    if args.reachability != "auto":
        config["reachability"] = args.reachability
    if args.container_user != "1000:1000":
        config["user"] = args.container_user
    if args.pull_policy != "if-not-present":
        config["pull_policy"] = args.pull_policy
    return config
