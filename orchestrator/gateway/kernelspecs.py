"""Which kernelspecs a gateway offers, and to whom.

A kernel that runs on the gateway's own host as the gateway's account can read the
gateway's store and users file: in multi-user mode such kernelspecs (the local
provisioner's) are neither listed nor startable, unless the operator names them in
``host_kernelspecs`` with an OS account template that contains ``{username}``; then
each user's kernels run as that user's own account (``ko-{username}``), from a
private directory holding only their connection file.

``kernelspec_access`` restricts a kernelspec to some users and ``@groups``; anyone
else gets the same 404 as for a kernelspec that does not exist.
"""

from __future__ import annotations

import typing as t

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from traitlets import Bool, Dict, List, Unicode, validate

from ..users import ADMIN

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
        help="kernelspec name -> user names and @groups that may see and start it"
        " (absent: everyone).",
    )

    @validate("host_kernelspecs")
    def _check_accounts(self, proposal: t.Any) -> dict[str, str]:
        for name, account in proposal["value"].items():
            if "{username}" not in account:
                raise ValueError(
                    f"host_kernelspecs[{name!r}] = {account!r}: the account must contain"
                    " {username}, or every user's kernels would share one account"
                )
        return dict(proposal["value"])

    @staticmethod
    def runs_on_host(spec: KernelSpec) -> bool:
        provisioner = (spec.metadata or {}).get("kernel_provisioner") or {}
        return str(provisioner.get("provisioner_name") or "") in HOST_PROVISIONERS

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        spec = super().get_kernel_spec(kernel_name)
        if not (self.multi_user and self.runs_on_host(spec)):
            return spec
        account = self.host_kernelspecs.get(kernel_name)
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

    def allowed(self, kernel_name: str, user: t.Any) -> bool:
        """Whether ``user`` may see and start ``kernel_name``."""
        who = self.kernelspec_access.get(kernel_name)
        name = str(getattr(user, "username", "") or "")
        if who is None or name == ADMIN:
            return True
        groups = {f"@{g}" for g in getattr(user, "groups", ())}
        return name in who or bool(groups & set(who))
