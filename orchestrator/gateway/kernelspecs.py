"""Which kernelspecs a gateway offers, and to whom.

A kernel that runs on the gateway's own host as the gateway's account can read the
gateway's store and users file: in multi-user mode such kernelspecs (the local
provisioner's) are neither listed nor startable, unless the operator names them in
``host_kernelspecs`` with an OS account template that contains ``{username}``; then
each user's kernels run as that user's own account (``ko-{username}``), from a
private directory holding only their connection file.

``kernelspec_access`` restricts a kernelspec to some users, ``@groups`` and (with a
JupyterHub) ``custom:`` scopes the user holds; anyone else gets the same 404 as for a
kernelspec that does not exist.

jupyter_client finds kernelspecs case-insensitively (``GPU`` starts ``gpu``), so every
name is first made canonical (:func:`canonical_kernel_name`: ASCII, lower case, the
characters of a kernelspec directory) and only the canonical name is checked, looked
up, started, pooled and counted; configured names are made canonical when read.
"""

from __future__ import annotations

import re
import typing as t

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from traitlets import Bool, Dict, List, Unicode, validate

from ..users import ADMIN, entitled, memberships

_KERNEL_NAME = re.compile(r"[a-z0-9._-]{1,128}")


def canonical_kernel_name(name: object) -> str | None:
    """The one spelling of a kernelspec name that checks and look-ups use, or None for
    a name no kernelspec can have (not ASCII, a character outside [A-Za-z0-9._-])."""
    if not isinstance(name, str) or not name.isascii():
        return None
    lowered = name.lower()
    return lowered if _KERNEL_NAME.fullmatch(lowered) else None


def canonical_keys(value: t.Mapping[str, t.Any], setting: str) -> dict[str, t.Any]:
    """``value`` with its kernelspec-name keys canonical; a ValueError naming
    ``setting`` for a key that is no kernelspec name or that two keys share."""
    out: dict[str, t.Any] = {}
    for key, item in value.items():
        name = canonical_kernel_name(key)
        if name is None:
            raise ValueError(f"{setting}: {key!r} is not a kernelspec name")
        if name in out:
            raise ValueError(f"{setting}: {key!r} names the kernelspec {name!r} twice")
        out[name] = item
    return out


HOST_PROVISIONERS = frozenset({"", "local-provisioner", "orchestrator-local-provisioner"})


class GatewayKernelSpecManager(KernelSpecManager):
    """KernelSpecManager that hides host kernels in multi-user mode and gives the
    allowed ones a separate OS account per user."""

    multi_user = Bool(False, help="Set by the gateway: it serves users besides its operator.")
    host_kernelspecs = Dict(
        value_trait=Unicode(),
        config=True,
        help="Multi-user mode: kernelspec name -> OS account template (with {username}) for"
        " the kernels that run on the gateway's host. Others of that kind are not offered.",
    )
    kernelspec_access = Dict(
        value_trait=List(Unicode()),
        config=True,
        help="kernelspec name -> user names, @groups and JupyterHub custom: scopes that may"
        " see and start it"
        " (absent: everyone).",
    )

    @validate("host_kernelspecs")
    def _check_accounts(self, proposal: t.Any) -> dict[str, str]:
        accounts = canonical_keys(proposal["value"], "GatewayKernelSpecManager.host_kernelspecs")
        for name, account in accounts.items():
            rest = account.replace("{username}", "")
            if "{username}" not in account or not re.fullmatch(r"[a-z_][a-z0-9_-]*", rest):
                raise ValueError(
                    f"GatewayKernelSpecManager.host_kernelspecs[{name!r}] = {account!r}: the"
                    " account must be {username} with a fixed prefix or suffix (ko-{username}):"
                    " without {username} every user's kernels would share one account, and"
                    " without a prefix a user named like a system account runs as it"
                )
        return accounts

    @validate("kernelspec_access")
    def _check_access(self, proposal: t.Any) -> dict[str, list[str]]:
        access = canonical_keys(proposal["value"], "GatewayKernelSpecManager.kernelspec_access")
        return {name: [who.lower() for who in entries] for name, entries in access.items()}

    @staticmethod
    def runs_on_host(spec: KernelSpec) -> bool:
        provisioner = (spec.metadata or {}).get("kernel_provisioner") or {}
        return str(provisioner.get("provisioner_name") or "") in HOST_PROVISIONERS

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        name = canonical_kernel_name(kernel_name)
        if name is None:
            raise NoSuchKernel(kernel_name)
        spec = super().get_kernel_spec(name)
        if not (self.multi_user and self.runs_on_host(spec)):
            return spec
        account = self.host_kernelspecs.get(name)
        if account is None:
            raise NoSuchKernel(kernel_name)
        metadata = dict(spec.metadata or {})
        provisioner = dict(metadata.get("kernel_provisioner") or {})
        provisioner.setdefault("provisioner_name", "local-provisioner")
        provisioner["config"] = {**(provisioner.get("config") or {}), "account": account}
        metadata["kernel_provisioner"] = provisioner
        spec.metadata = metadata
        return spec

    def get_all_specs(self) -> dict[str, t.Any]:
        specs: dict[str, t.Any] = {}
        for name, resource_dir in self.find_kernel_specs().items():
            try:
                spec = self.get_kernel_spec(name)
            except NoSuchKernel:
                continue
            except Exception:  # a broken kernel.json: as jupyter_client, skip it
                self.log.warning("Error loading kernelspec %r", name, exc_info=True)
                continue
            specs[name] = {"resource_dir": resource_dir, "spec": spec.to_dict()}
        return specs

    def allowed(self, kernel_name: object, user: t.Any) -> bool:
        """Whether ``user`` may see and start ``kernel_name`` (in any spelling)."""
        return self.resolve(kernel_name, user) is not None

    def resolve(self, kernel_name: object, user: t.Any) -> str | None:
        """The canonical name of ``kernel_name`` if ``user`` may see and start it."""
        canonical = canonical_kernel_name(kernel_name)
        if canonical is None:
            return None
        if self.allowed_kernelspecs and canonical not in self.allowed_kernelspecs:
            return None  # jupyter_client's own allow-list filters listings only
        who = self.kernelspec_access.get(canonical)
        name = str(getattr(user, "username", "") or "")
        if who is None or name == ADMIN:
            return canonical
        held = memberships(getattr(user, "groups", ()), getattr(user, "scopes", ()))
        return canonical if entitled(who, name, held) else None
