"""The provisioner contract and the package layering, checked on the tree itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from traitlets.config import Configurable

from orchestrator.provisioning import installed_provisioners, load_provisioner_class
from orchestrator.provisioning.contract import OrchestratorProvisionerMixin

REPO = Path(__file__).resolve().parent.parent
OURS = [name for name, ref in installed_provisioners().items() if ref.startswith("provisioners.")]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_core_never_imports_a_provisioner() -> None:
    """Imports run one way: provisioners -> orchestrator. The core finds provisioners
    through entry points and talks to them through the contract only."""
    offenders = {
        str(path.relative_to(REPO)): sorted(
            m for m in _imports(path) if m.split(".")[0] == "provisioners"
        )
        for path in (REPO / "orchestrator").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("name", OURS)
def test_every_provisioner_implements_the_contract(name: str) -> None:
    cls = load_provisioner_class(name)
    assert issubclass(cls, OrchestratorProvisionerMixin)
    assert cls.kernelspec_summary, f"{name} has no kernelspec summary"


def _configurables() -> list[type[Configurable]]:
    from orchestrator import manager, multikernelmanager
    from orchestrator.gateway import app, auth, kernelmanager

    classes: list[type[Configurable]] = [load_provisioner_class(n) for n in OURS]
    for module in (manager, multikernelmanager, app, auth, kernelmanager):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Configurable)
                and value.__module__ == module.__name__
            ):
                classes.append(value)
    return classes


@pytest.mark.parametrize("cls", _configurables(), ids=lambda c: c.__name__)
def test_every_config_trait_says_what_it_does(cls: type[Configurable]) -> None:
    """Our own config traits, that is (inherited jupyter_client/jupyter_server ones are
    documented there)."""
    ours = {
        name
        for klass in cls.__mro__
        if klass.__module__.split(".")[0] in ("orchestrator", "provisioners")
        for name in vars(klass)
    }
    missing = [
        name
        for name, trait in cls.class_traits(config=True).items()
        if name in ours and not (trait.help or "").strip()
    ]
    assert missing == [], f"{cls.__name__}: config traits without help: {missing}"
