"""sbatch's own options, and extra arguments read the way sbatch reads them.

sbatch parses its argv with ``getopt_long``: a long option may be abbreviated to any
unique prefix (``--arr=0-9`` is ``--array``), takes its value as ``--opt=value`` or
``--opt value``, and a later repetition overrides an earlier one. A check that
compares flags as written is bypassed by all three. So extra arguments are first
turned into sbatch's own full option names, here, and only then judged: an
abbreviation, a short option, an unknown option or one given twice is refused, with
a message naming it, before anything reaches the cluster.

The table is sbatch's (``sbatch --help``, Slurm 22.05 to 24.11): whether each long
option takes a value. An option sbatch has and the table lacks is refused as unknown,
never passed on unjudged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from orchestrator.errors import OrchestratorError

REQUIRED, OPTIONAL, NONE = "required", "optional", "none"

_REQUIRED_VALUE = (
    "account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment"
    " constraint container container-id core-spec cores-per-socket cpu-freq cpus-per-gpu"
    " cpus-per-task deadline delay-boot dependency distribution error exclude export-file"
    " extra extra-node-info gid gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket"
    " gpus-per-task gres gres-flags hint input job-name licenses mail-type mail-user mcs-label"
    " mem mem-bind mem-per-cpu mem-per-gpu mincpus network nodefile nodelist nodes ntasks"
    " ntasks-per-core ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output"
    " partition power prefer priority profile qos reservation signal sockets-per-node"
    " switches thread-spec threads-per-core time time-min tmp tres-bind tres-per-task uid"
    " wait-all-nodes wckey"
)
_OPTIONAL_VALUE = "exclusive export kill-command nice no-kill propagate wrap"
_NO_VALUE = (
    "contiguous get-user-env hold ignore-pbs no-requeue overcommit oversubscribe parsable"
    " quiet reboot requeue spread-job test-only use-min-nodes verbose wait"
)
SBATCH_OPTIONS: dict[str, str] = {
    **{f"--{n}": REQUIRED for n in _REQUIRED_VALUE.split()},
    **{f"--{n}": OPTIONAL for n in _OPTIONAL_VALUE.split()},
    **{f"--{n}": NONE for n in _NO_VALUE.split()},
}
_SAFE_VALUE = re.compile(r"[^\s;&|`$<>\\'\"\0]*")


class SbatchArgumentError(OrchestratorError):
    """An extra sbatch argument is not one sbatch would read as written."""


def _full_name(flag: str) -> str:
    if flag in SBATCH_OPTIONS:
        return flag
    longer = sorted(name for name in SBATCH_OPTIONS if name.startswith(flag))
    if longer:
        raise SbatchArgumentError(
            f"sbatch argument {flag} abbreviates {' or '.join(longer)}: write options in full"
        )
    raise SbatchArgumentError(f"sbatch argument {flag} is not an sbatch option")


def parse_sbatch_words(words: Iterable[str]) -> list[tuple[str, str | None]]:
    """``words`` as sbatch would read them: (full option name, value or None) each."""
    items = list(words)
    parsed: list[tuple[str, str | None]] = []
    i = 0
    while i < len(items):
        word = items[i]
        i += 1
        if not re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", word, re.DOTALL):
            raise SbatchArgumentError(
                f"sbatch argument {word!r} must look like --flag or --flag=value, the flag in"
                " full (--partition, not -p)"
            )
        flag, eq, value = word.partition("=")
        name = _full_name(flag)
        kind = SBATCH_OPTIONS[name]
        if not eq and kind == REQUIRED:
            if i >= len(items) or items[i].startswith("-"):
                raise SbatchArgumentError(f"sbatch argument {name} needs a value")
            value, i = items[i], i + 1
        elif eq and kind == NONE:
            raise SbatchArgumentError(f"sbatch argument {name} takes no value")
        if (eq or kind == REQUIRED) and not _SAFE_VALUE.fullmatch(value):
            raise SbatchArgumentError(
                f"sbatch argument {name}={value!r}: no spaces or shell characters"
            )
        parsed.append((name, value if eq or kind == REQUIRED else None))
    return parsed


def render(name: str, value: str | None) -> str:
    return name if value is None else f"{name}={value}"
