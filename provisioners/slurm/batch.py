"""What a kernel's job asks Slurm for: resources, validated, as ``sbatch`` arguments.

Values come from three places, in this order: the kernelspec (the operator's), a
named profile the kernelspec defines (``KERNEL_SLURM_PROFILE``), and a start's own
``KERNEL_SLURM_*`` variables, which may set only the resources the kernelspec lets
users set, within its maxima and choices. Every value is checked for its syntax here,
so a start that asks for ``--time=0`` or ``--mem=-1`` or ``partition=a --wrap=...``
gets an error naming the value before anything reaches the cluster. Nothing here
ever reaches a shell: ``sbatch`` gets an argv list, and the batch script holds only
the operator's set-up lines and a constant ``exec`` line.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import OrchestratorError

from .sbatchopts import SbatchArgumentError, parse_sbatch_words, render

RESOURCES = (
    "partition",
    "account",
    "qos",
    "time",
    "nodes",
    "cpus",
    "mem",
    "gres",
    "reservation",
    "constraint",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
_ONE_GRES = r"[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+)?(:\d+)?"
_GRES = re.compile(rf"{_ONE_GRES}(,{_ONE_GRES})*")
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.\[\]&|*:,()-]{1,256}")
_MEM = re.compile(r"(\d+)([KMGT]?)", re.IGNORECASE)
_MEM_UNITS = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
# Flags the provisioner sets itself: neither the kernelspec nor a start may set them.
MANAGED = frozenset(
    {
        "--job-name",
        "--comment",
        "--output",
        "--error",
        "--input",
        "--parsable",
        "--wrap",
        "--array",
        "--requeue",
        "--no-requeue",
        "--export",
        "--export-file",
        "--get-user-env",
        "--chdir",
        "--open-mode",
        "--uid",
        "--gid",
        "--batch",
        "--clusters",
        "--container",
        "--container-id",
        "--test-only",
        "--wait",
    }
)
#: Flags for the resources with settings of their own (``resources``, a profile's
#: values, ``KERNEL_SLURM_<NAME>``): as extra arguments they would override the checked
#: value, since sbatch takes the last one.
RESOURCE_FLAGS = {
    "--partition": "partition",
    "--account": "account",
    "--qos": "qos",
    "--time": "time",
    "--nodes": "nodes",
    "--cpus-per-task": "cpus",
    "--mem": "mem",
    "--gres": "gres",
    "--reservation": "reservation",
    "--constraint": "constraint",
}
#: Flags that change how much a job takes: a start may not add them (only the
#: kernelspec's own arguments may), whatever the allow-list says.
AMOUNT_FLAGS = frozenset(
    {
        *RESOURCE_FLAGS,
        "--mem-per-cpu",
        "--mem-per-gpu",
        "--gpus",
        "--gpus-per-node",
        "--gpus-per-socket",
        "--gpus-per-task",
        "--cpus-per-gpu",
        "--ntasks",
        "--ntasks-per-node",
        "--ntasks-per-core",
        "--ntasks-per-socket",
        "--ntasks-per-gpu",
        "--mincpus",
        "--exclusive",
        "--oversubscribe",
        "--time-min",
        "--tmp",
        "--nodelist",
        "--nodefile",
        "--exclude",
        "--core-spec",
        "--thread-spec",
        "--licenses",
        "--priority",
        "--extra-node-info",
        "--sockets-per-node",
        "--cores-per-socket",
        "--threads-per-core",
        "--tres-per-task",
        "--switches",
        "--bb",
        "--bbf",
    }
)
ENV_PREFIX = "KERNEL_SLURM_"


class ResourceError(OrchestratorError):
    """A resource value or sbatch argument was refused."""


def parse_walltime(text: str) -> int:
    """Seconds of a Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ResourceError(f"time {text!r} is not a Slurm time limit (e.g. 01:00:00 or 1-00:00)")
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + (a or 0) * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = (a or 0) * 3600 + (b or 0) * 60 + c
    elif b is not None:  # MM:SS
        seconds = (a or 0) * 60 + b
    else:  # MM
        seconds = (a or 0) * 60
    if seconds <= 0:
        raise ResourceError(f"time {text!r} must be more than zero")
    return seconds


def format_walltime(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"


def parse_time_left(text: str) -> int | None:
    """squeue's ``%L``: seconds left, or None (UNLIMITED, INVALID, NOT_SET)."""
    try:
        return parse_walltime(text)
    except ResourceError:
        return 0 if text.strip() in ("0:00", "00:00:00") else None


def _mem_mib(text: str) -> float:
    m = _MEM.fullmatch(text.strip())
    if not m or int(m[1]) <= 0:
        raise ResourceError(f"mem {text!r} must be a positive size such as 4096M or 16G")
    return int(m[1]) * _MEM_UNITS[m[2].upper()]


def _positive_int(name: str, value: Any, top: int = 100_000) -> int:
    text = str(value).strip()
    if not re.fullmatch(r"\d{1,7}", text) or not 0 < int(text) <= top:
        raise ResourceError(f"{name} {value!r} must be a whole number from 1 to {top}")
    return int(text)


def check_value(name: str, value: Any) -> str:
    """``value`` in its canonical sbatch form, or a ResourceError naming it."""
    text = str(value).strip()
    if name in ("partition", "account", "qos", "reservation"):
        if not _NAME.fullmatch(text):
            raise ResourceError(f"{name} {value!r} is not a valid Slurm name")
        return text
    if name == "time":
        return format_walltime(parse_walltime(text))
    if name in ("nodes", "cpus"):
        return str(_positive_int(name, text))
    if name == "mem":
        _mem_mib(text)
        return text.upper()
    if name == "gres":
        if not _GRES.fullmatch(text) or re.search(r":0+(,|$)", text):
            raise ResourceError(f"gres {value!r} must look like gpu:1 or gpu:a100:2")
        return text
    if name == "constraint":
        if not _CONSTRAINT.fullmatch(text):
            raise ResourceError(f"constraint {value!r} has characters Slurm features cannot hold")
        return text
    raise ResourceError(f"unknown Slurm resource {name!r} (known: {', '.join(RESOURCES)})")


def check_sbatch_args(
    words: list[str], allowlist: list[str] | None, taken: Iterable[str] = ()
) -> list[str]:
    """Extra ``sbatch`` arguments, read as sbatch reads them (full names, values), then
    judged: never a managed flag, nor a resource that has its own setting; for a start's
    own arguments (``allowlist`` given) never an amount of resources, never a flag twice
    nor one the kernelspec or profile set already (``taken``: sbatch keeps the last),
    and each matching one of ``allowlist``'s patterns in its full form."""
    seen: set[str] = set(taken)
    checked: list[str] = []
    try:
        parsed = parse_sbatch_words(words)
    except SbatchArgumentError as e:
        raise ResourceError(str(e)) from None
    for name, value in parsed:
        arg = render(name, value)
        if name in MANAGED:
            raise ResourceError(
                f"sbatch argument {name} is set by the provisioner and cannot be given"
            )
        if allowlist is None and name in RESOURCE_FLAGS:
            raise ResourceError(
                f"sbatch argument {name}: set {RESOURCE_FLAGS[name]} through the kernelspec's"
                " resources (or a profile), where it is checked"
            )
        if allowlist is not None:
            if name in AMOUNT_FLAGS:
                hint = RESOURCE_FLAGS.get(name)
                how = f" (use {ENV_PREFIX}{hint.upper()}, within the maxima)" if hint else ""
                raise ResourceError(f"sbatch argument {name} cannot be given by a start{how}")
            if name in seen:
                raise ResourceError(
                    f"sbatch argument {name} is given twice (or the kernelspec sets it)"
                )
            if not any(fnmatch.fnmatchcase(arg, p) for p in allowlist):
                allowed = ", ".join(allowlist) or "none"
                raise ResourceError(f"sbatch argument {arg!r} is not allowed (allowed: {allowed})")
        seen.add(name)
        checked.append(arg)
    return checked


@dataclass
class JobRequest:
    """The resources of one kernel's job and the extra arguments, all checked."""

    resources: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    profile: str = ""

    @property
    def walltime(self) -> int | None:
        return parse_walltime(self.resources["time"]) if "time" in self.resources else None

    def sbatch_args(self) -> list[str]:
        flags = {"cpus": "--cpus-per-task", "time": "--time", "nodes": "--nodes"}
        args = [f"{flags.get(k, '--' + k)}={v}" for k, v in self.resources.items()]
        return args + list(self.extra_args)


def job_request(
    *,
    base: Mapping[str, Any],
    profiles: Mapping[str, Mapping[str, Any]],
    sbatch_args: list[str],
    client_env: Mapping[str, str],
    overridable: list[str],
    choices: Mapping[str, list[str]],
    maxima: Mapping[str, Any],
    sbatch_arg_allowlist: list[str],
) -> JobRequest:
    """Merge kernelspec, profile and a start's variables into one checked request."""
    for name in (*overridable, *choices, *maxima):
        if name not in RESOURCES:
            raise ResourceError(f"kernelspec: unknown Slurm resource {name!r}")
    values = {k: check_value(k, v) for k, v in base.items() if v not in ("", None)}
    extra = check_sbatch_args(list(sbatch_args), None)
    profile = client_env.get(ENV_PREFIX + "PROFILE", "").strip()
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ResourceError(f"Slurm profile {profile!r} is not defined (profiles: {known})")
        bundle = dict(profiles[profile])
        bundle.pop("allowed", None)  # who may pick it: the provisioner checked
        extra += check_sbatch_args(list(bundle.pop("sbatch_args", [])), None)
        values.update({k: check_value(k, v) for k, v in bundle.items()})
    for name in RESOURCES:
        raw = client_env.get(ENV_PREFIX + name.upper())
        if raw is None or raw == "":
            continue
        if name not in overridable:
            raise ResourceError(
                f"{ENV_PREFIX}{name.upper()}: this kernelspec does not let a start set {name}"
                f" (it may set: {', '.join(overridable) or 'nothing'})"
            )
        value = check_value(name, raw)
        allowed = choices.get(name)
        if allowed and not any(fnmatch.fnmatchcase(value, p) for p in allowed):
            raise ResourceError(f"{name} {value!r} is not allowed (allowed: {', '.join(allowed)})")
        if name in maxima and _exceeds(name, value, str(maxima[name])):
            raise ResourceError(
                f"{name} {value!r} is above this kernelspec's maximum {maxima[name]}"
            )
        values[name] = value
    raw_args = client_env.get(ENV_PREFIX + "SBATCH_ARGS", "")
    if raw_args.strip():
        try:
            words = shlex.split(raw_args)
        except ValueError as e:
            raise ResourceError(f"{ENV_PREFIX}SBATCH_ARGS: {e}") from None
        taken = {arg.split("=", 1)[0] for arg in extra}
        extra += check_sbatch_args(words, list(sbatch_arg_allowlist), taken)
    return JobRequest(values, extra, profile)


def _exceeds(name: str, value: str, maximum: str) -> bool:
    if name == "time":
        return parse_walltime(value) > parse_walltime(maximum)
    if name == "mem":
        return _mem_mib(value) > _mem_mib(maximum)
    if name in ("nodes", "cpus"):
        return int(value) > int(maximum)
    return False


def batch_script(python: str, setup: list[str]) -> str:
    """The job's script: the operator's set-up lines, then the supervisor (the job's
    batch process). ``{kernel_dir}`` is filled in, shell-quoted, on the login host."""
    lines = ["#!/bin/sh", "# kernel-orchestrator: a Jupyter kernel's job", *setup]
    lines.append(f"exec {shlex.quote(python)} {{kernel_dir}}/supervisor.py {{kernel_dir}}")
    return "\n".join(lines) + "\n"
