"""``kernel-orchestrator kernelspec install kubernetes-provisioner``: its options."""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_IMAGE


def add_arguments(parser: Any) -> None:
    """The kubernetes-provisioner options of ``kernelspec install``."""
    g = parser.add_argument_group("kubernetes-provisioner")
    g.add_argument("--image", default=DEFAULT_IMAGE)
    g.add_argument("--allow-image", action="append", default=[], metavar="PATTERN")
    g.add_argument("--namespace", default="default")
    g.add_argument("--namespace-template", default="", help="e.g. kernels-{username}")
    g.add_argument("--create-namespace", action="store_true")
    g.add_argument("--api-url", default="")
    g.add_argument("--cpu-request", default="")
    g.add_argument("--cpu-limit", default="")
    g.add_argument("--memory-request", default="")
    g.add_argument("--memory-limit", default="")
    g.add_argument("--gpus", type=int, default=0)
    g.add_argument("--gpu-resource", default="nvidia.com/gpu")
    g.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--priority-class", default="")
    g.add_argument("--service-account", default="")
    g.add_argument("--startup-timeout", type=float, default=120.0)
    g.add_argument("--reachability", choices=["pod-ip", "port-forward"], default="pod-ip")


def config_from(args: Any) -> dict[str, Any]:
    """The kernelspec's provisioner config for those options (only what differs from the
    defaults)."""
    cfg: dict[str, Any] = {"image": args.image, "namespace": args.namespace}
    if args.allow_image:
        cfg["image_allowlist"] = [args.image, *args.allow_image]
    for key in (
        "namespace_template",
        "api_url",
        "cpu_request",
        "cpu_limit",
        "memory_request",
        "memory_limit",
    ):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    if args.create_namespace:
        cfg["create_namespace"] = True
    if args.gpus:
        cfg["gpus"] = args.gpus
        cfg["gpu_resource"] = args.gpu_resource
    if args.node_selector:
        pairs = [p.partition("=") for p in args.node_selector]
        cfg["node_selector"] = {k: v for k, _, v in pairs}
    if args.priority_class:
        cfg["priority_class_name"] = args.priority_class
    if args.service_account:
        cfg["service_account_name"] = args.service_account
    if args.startup_timeout != 120.0:
        cfg["startup_timeout"] = args.startup_timeout
    if args.reachability != "pod-ip":
        cfg["reachability"] = args.reachability
    return cfg
