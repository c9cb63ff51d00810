"""``kernel-orchestrator kernelspec install PROVISIONER``: write a kernelspec for a provisioner.

Each of our provisioners says which options it takes and what config they become
(``add_kernelspec_arguments`` / ``kernelspec_config``); this module turns that into a
``kernel.json`` installed like ``jupyter kernelspec install`` does (the user's data
dir by default, ``--prefix`` or ``--sys-prefix`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

from ..errors import OrchestratorError
from ..interrupts import METADATA_KEY, known_interrupt_signal, parse_signal
from ..provisioning import installed_provisioners, load_provisioner_class

# Short names users may type for our provisioners.
PROVISIONER_ALIASES = {
    "local": "orchestrator-local-provisioner",
    "local-provisioner": "orchestrator-local-provisioner",
}

_NAME_RE = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)


def our_provisioners() -> dict[str, type]:
    """Installed provisioners that know how to describe their kernelspec options."""
    from ..provisioning.contract import OrchestratorProvisionerMixin

    found: dict[str, type] = {}
    for name in sorted(installed_provisioners()):
        try:
            cls = load_provisioner_class(name)
        except Exception:
            continue
        if issubclass(cls, OrchestratorProvisionerMixin):
            found[name] = cls
    return found


def resolve_provisioner_name(name: str) -> str:
    name = PROVISIONER_ALIASES.get(name, name)
    ours = our_provisioners()
    if name not in ours:
        raise OrchestratorError(
            f"unknown provisioner {name!r} (choose from: {', '.join(ours) or 'none installed'})"
        )
    return name


def add_install_parser(subparsers: Any, describe: bool = True) -> None:
    """Register ``kernelspec install`` with one sub-command per provisioner (each class
    loaded for its options); without ``describe``, only its name (another command runs)."""
    install = subparsers.add_parser(
        "install", help="write a kernelspec that runs kernels through a provisioner"
    )
    if not describe:
        install.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    per_provisioner = install.add_subparsers(dest="provisioner", metavar="PROVISIONER")
    per_provisioner.required = True
    for name, cls in our_provisioners().items():
        aliases = [a for a, target in PROVISIONER_ALIASES.items() if target == name]
        sub = per_provisioner.add_parser(
            name, aliases=aliases, help=getattr(cls, "kernelspec_summary", "") or name
        )
        sub.set_defaults(provisioner_name=name)
        common = sub.add_argument_group("kernelspec")
        common.add_argument("--name", required=True, help="kernelspec name ([a-z0-9._-])")
        common.add_argument("--display-name", help="name shown in front-ends")
        common.add_argument("--language", help="the kernel's language (default: python)")
        common.add_argument(
            "--interrupt-mode",
            choices=("signal", "message"),
            help="how interrupts reach the kernel (default: signal, or the wrapped spec's)",
        )
        common.add_argument(
            "--interrupt-signal",
            metavar="SIGNAL",
            help="the signal a signal-mode interrupt sends (SIGINT; SIGUSR2 for Toree),"
            " or 'none' for kernels a signal would end (xeus); default: known kernels'"
            " own, else SIGINT",
        )
        command = common.add_mutually_exclusive_group()
        command.add_argument("--python", help="python executable that runs ipykernel")
        command.add_argument(
            "--argv",
            metavar="JSON",
            help="the kernel's command line as a JSON list, run as is, without a shell:"
            ' \'["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]\'',
        )
        command.add_argument(
            "--from-kernelspec",
            metavar="NAME",
            help="wrap an installed kernelspec (Debian's 'ir', say): its argv, language,"
            " interrupt mode, env and files, run through this provisioner",
        )
        common.add_argument(
            "--env",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="environment variable set for the kernel (repeatable)",
        )
        if "working_dir_map" in getattr(cls, "class_trait_names", lambda: [])():
            common.add_argument(
                "--working-dir-map",
                action="append",
                default=[],
                metavar="SERVER=KERNEL",
                help="map the notebook's directory on the server (KERNEL_WORKING_DIR) under"
                " SERVER to the same place under KERNEL where the kernel runs; {username}"
                " allowed in KERNEL (repeatable), e.g. /home/jovyan=/home/{username}",
            )
        # Default: the user's data dir. (--user is left to provisioners: the SSH user.)
        where = common.add_mutually_exclusive_group()
        where.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels")
        where.add_argument("--sys-prefix", action="store_true", help=f"install under {sys.prefix}")
        cls.add_kernelspec_arguments(sub)  # type: ignore[attr-defined]


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise OrchestratorError(f"bad --env value {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def parse_working_dir_map(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        server, sep, kernel = pair.partition("=")
        if not sep or not server.startswith("/") or not kernel.startswith("/"):
            raise OrchestratorError(
                f"bad --working-dir-map {pair!r}: expected SERVER=KERNEL, both absolute paths"
            )
        mapping[server] = kernel
    return mapping


def _argv_option(text: str) -> list[str]:
    try:
        argv = json.loads(text)
    except ValueError as e:
        raise OrchestratorError(f"bad --argv {text!r}: not JSON ({e})") from None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) and a for a in argv)):
        raise OrchestratorError(f"bad --argv {text!r}: expected a JSON list of non-empty strings")
    if not any("{connection_file}" in a for a in argv):
        raise OrchestratorError(
            f"bad --argv {text!r}: no argument holds {{connection_file}}, so the kernel"
            " would never learn its ports and key"
        )
    return argv


def wrapped_kernelspec(name: str) -> tuple[dict[str, Any], Path]:
    """An installed kernelspec's kernel.json and directory, to wrap."""
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except Exception:
        raise OrchestratorError(
            f"--from-kernelspec {name!r}: no such kernelspec (see 'jupyter kernelspec list')"
        ) from None
    if (spec.metadata or {}).get("kernel_provisioner"):
        raise OrchestratorError(
            f"--from-kernelspec {name!r} already names a provisioner; wrap the kernel's own"
            " kernelspec instead"
        )
    return spec.to_dict(), Path(spec.resource_dir)


def build_kernelspec(args: argparse.Namespace) -> dict[str, Any]:
    if not _NAME_RE.fullmatch(args.name):
        raise OrchestratorError(
            f"bad kernelspec name {args.name!r}: use letters, digits, '.', '_' and '-' only"
        )
    cls = load_provisioner_class(args.provisioner_name)
    base: dict[str, Any] = {}
    if getattr(args, "from_kernelspec", None):
        base, _ = wrapped_kernelspec(args.from_kernelspec)
        argv = list(base["argv"])
    elif getattr(args, "argv", None):
        argv = _argv_option(args.argv)
    else:
        argv = cls.kernelspec_argv(args)  # type: ignore[attr-defined]
    metadata = {k: v for k, v in (base.get("metadata") or {}).items() if k != METADATA_KEY}
    config = cls.kernelspec_config(args)  # type: ignore[attr-defined]
    if mapping := parse_working_dir_map(getattr(args, "working_dir_map", None) or []):
        config["working_dir_map"] = mapping
    metadata["kernel_provisioner"] = {"provisioner_name": args.provisioner_name, "config": config}
    signal_name = getattr(args, "interrupt_signal", None) or known_interrupt_signal(argv)
    if signal_name:
        try:
            parse_signal(signal_name)
        except ValueError as e:
            raise OrchestratorError(f"bad --interrupt-signal: {e}") from None
        metadata[METADATA_KEY] = {"interrupt_signal": signal_name}
    return {
        "argv": argv,
        "display_name": args.display_name or base.get("display_name") or args.name,
        "language": args.language or base.get("language") or "python",
        "interrupt_mode": args.interrupt_mode or base.get("interrupt_mode") or "signal",
        "env": {**(base.get("env") or {}), **parse_env(args.env)},
        "metadata": metadata,
    }


def install_kernelspec(args: argparse.Namespace) -> str:
    """Write the kernelspec; return where it went."""
    spec = build_kernelspec(args)
    with tempfile.TemporaryDirectory() as tmp:
        if getattr(args, "from_kernelspec", None):
            # Its files come along (logos, and what argv names by {resource_dir}).
            _, source = wrapped_kernelspec(args.from_kernelspec)
            shutil.copytree(source, tmp, dirs_exist_ok=True, symlinks=True)
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        prefix = sys.prefix if args.sys_prefix else args.prefix
        try:
            return str(
                KernelSpecManager().install_kernel_spec(
                    tmp, kernel_name=args.name, user=prefix is None, prefix=prefix
                )
            )
        except OSError as e:
            raise OrchestratorError(f"cannot install kernelspec {args.name!r}: {e}") from e
