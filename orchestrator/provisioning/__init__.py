"""Finding and creating provisioners by name.

jupyter_client's ``KernelProvisionerFactory`` does this too, but it cannot substitute
one provisioner for another: our managers run kernelspecs that name the stock
``local-provisioner`` with our re-attachable subclass instead (``provisioner_aliases``),
and they re-create a provisioner from a saved record whose kernelspec may have been
edited or removed since.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.provisioning import KernelProvisionerBase

from ..errors import OrchestratorError

GROUP = "jupyter_client.kernel_provisioners"


def default_provisioner_name() -> str:
    """jupyter_client's setting (``KernelProvisionerFactory.default_provisioner_name``,
    ``$JUPYTER_DEFAULT_PROVISIONER_NAME``): the provisioner of kernelspecs naming none."""
    from jupyter_client.provisioning import KernelProvisionerFactory

    return str(KernelProvisionerFactory.instance().default_provisioner_name)


def installed_provisioners() -> dict[str, str]:
    """Provisioner name -> ``module:Class`` for every registered entry point."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load_provisioner_class(name: str) -> type[KernelProvisionerBase]:
    """The provisioner class registered under ``name`` (clear error if there is none).

    Looked up once per name: reading entry points scans every installed package's
    metadata (milliseconds each time), which re-attaching many kernels would repeat.
    """
    cls = _loaded.get(name)
    if cls is None:
        cls = _loaded[name] = _load_provisioner_class(name)
    return cls


_loaded: dict[str, type[KernelProvisionerBase]] = {}


def _load_provisioner_class(name: str) -> type[KernelProvisionerBase]:
    eps = entry_points(group=GROUP, name=name)
    for ep in eps:
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, KernelProvisionerBase)):
            raise OrchestratorError(f"provisioner {name!r} ({ep.value}) is not a provisioner class")
        return cls
    available = ", ".join(sorted(installed_provisioners())) or "none"
    raise OrchestratorError(f"unknown provisioner {name!r} (installed: {available})")


def provisioner_stanza(spec: KernelSpec) -> tuple[str, dict[str, Any]]:
    """``(provisioner_name, config)`` from a kernelspec's ``kernel_provisioner`` metadata."""
    stanza = (spec.metadata or {}).get("kernel_provisioner") or {}
    name = stanza.get("provisioner_name") or default_provisioner_name()
    config = stanza.get("config") or {}
    if not isinstance(config, dict):
        raise OrchestratorError(
            f"kernelspec {spec.display_name!r}: kernel_provisioner.config must be an object"
        )
    return str(name), dict(config)


def create_provisioner(
    name: str, kernel_id: str, spec: KernelSpec, config: dict[str, Any], parent: Any
) -> KernelProvisionerBase:
    """Instantiate provisioner ``name`` for one kernel, the way jupyter_client's factory does."""
    cls = load_provisioner_class(name)
    return cls(kernel_id=kernel_id, kernel_spec=spec, parent=parent, **config)
