"""The notebook's directory mapped to the kernel's side, and entered there by descriptor
(provisioners.common.workdir and the kernel-side half in kernelside)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import KernelStartError
from provisioners.common.kernelside import kernel_cwd, open_working_dir
from provisioners.common.workdir import WorkingDir, map_working_dir

MAP = {
    "/srv/homes/{username}": "/export/homes/{username}",
    "/srv/homes/{username}/scratch": "/scratch/{username}",
    "/data": "/data",
}


@pytest.mark.parametrize(
    ("requested", "path", "root"),
    [
        ("/srv/homes/alice", "/export/homes/alice", "/export/homes/alice"),
        ("/srv/homes/alice/a/b", "/export/homes/alice/a/b", "/export/homes/alice"),
        ("/srv/homes/alice/scratch/run", "/scratch/alice/run", "/scratch/alice"),  # longest
        ("/srv/homes/alice/scratchy", "/export/homes/alice/scratchy", "/export/homes/alice"),
        ("/data/x", "/data/x", "/data"),
    ],
)
def test_a_notebook_directory_is_mapped_by_the_longest_prefix(
    requested: str, path: str, root: str
) -> None:
    assert map_working_dir(requested, MAP, "alice") == WorkingDir(path, root)


@pytest.mark.parametrize(
    ("requested", "why"),
    [
        ("/srv/homes/bob/notes", "under none of the directories"),  # another user's
        ("/srv/homes/alice/../bob", "without '..'"),
        ("/srv/homes/alice/./x", "without '..'"),
        ("//srv/homes/alice", "without '..'"),
        ("/srv/homes/alice//x", "without '..'"),
        ("srv/homes/alice", "absolute"),
        ("/etc", "under none"),
        ("/srv/homes/alice\0", "absolute"),
    ],
)
def test_what_is_not_mapped_is_refused(requested: str, why: str) -> None:
    with pytest.raises(KernelStartError, match=why) as refused:
        map_working_dir(requested, MAP, "alice")
    assert "KERNEL_WORKING_DIR" in str(refused.value)


def test_a_user_template_needs_the_user() -> None:
    with pytest.raises(KernelStartError, match="KERNEL_USERNAME"):
        map_working_dir("/srv/homes/x", MAP, "")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "nb" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "nb" / "link").symlink_to(tmp_path / "elsewhere")
    (root / "nb" / "file").write_text("")
    return root


def test_the_kernel_side_enters_the_directory_by_descriptor(tree: Path) -> None:
    fd = open_working_dir(str(tree / "nb" / "sub"), str(tree))
    try:
        assert os.path.samefile(f"/proc/self/fd/{fd}", tree / "nb" / "sub")
    finally:
        os.close(fd)
    # The kernel is started in the opened directory itself.
    cwd, fd = kernel_cwd({"working_dir": {"path": str(tree / "nb"), "root": str(tree)}})
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getcwd())"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == str(tree / "nb")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("rel", "why"),
    [
        ("nb/link", "is a symbolic link"),
        ("nb/link/deeper", "is a symbolic link"),
        ("nb/missing", "No such file or directory"),
        ("nb/file", "is not a directory"),
    ],
)
def test_the_kernel_side_refuses_links_and_missing_directories(
    tree: Path, rel: str, why: str
) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match=why):
        open_working_dir(str(tree / rel), str(tree))
    assert set(os.listdir("/proc/self/fd")) == before  # no descriptor left open


@pytest.mark.parametrize(
    ("templates", "why"),
    [
        (["/srv/{username}-x"], "whole path component"),
        (["/srv/{username}", "/srv/home/{username}"], "a user named 'home' would get /srv/home"),
        (["/srv/{username}", "/srv/shared"], "a user named 'shared'"),
    ],
)
def test_templates_that_would_let_a_name_spell_another_users_path(
    templates: list[str], why: str
) -> None:
    from provisioners.common.workdir import check_user_templates

    with pytest.raises(KernelStartError, match=why):
        check_user_templates(templates, "working_dir_map")
    mapping = {t: t for t in templates}
    with pytest.raises(KernelStartError, match=why):
        map_working_dir("/srv/alice", mapping, "alice")


@pytest.mark.parametrize(
    ("volumes", "why"),
    [
        (["/srv/homes/{username}/work:/work"], "must be the last component"),
        (["/srv/{username}-home:/home"], "whole path component"),
        (["home-{username}:/home", "home-data-{username}:/data"], "overlap"),
        (["{username}-home:/home"], "must end with"),
        (["/srv/homes/{username}:/home/{username}", "/etc:/host-etc:ro"], "none of volume_roots"),
    ],
)
def test_docker_volume_templates_keep_users_apart(volumes: list[str], why: str) -> None:
    from provisioners.docker.volumes import user_mounts

    with pytest.raises(KernelStartError, match=why):
        user_mounts(
            volumes, "alice", multi_tenant=True, volume_roots=["/srv/homes"], local_engine=False
        )


def test_the_kernel_side_refuses_directories_anyone_could_fill(tree: Path) -> None:
    (tree / "nb" / "open").mkdir()
    (tree / "nb" / "open").chmod(0o777)
    with pytest.raises(RuntimeError, match="writable by every account"):
        open_working_dir(str(tree / "nb" / "open"), str(tree))
    (tree / "nb" / "open").chmod(0o1777)  # sticky, like /tmp: files stay their owners'
    os.close(open_working_dir(str(tree / "nb" / "open"), str(tree)))
    os.chown(tree, 12345, 12345)
    with pytest.raises(RuntimeError, match="belongs to uid 12345"):
        open_working_dir(str(tree / "nb"), str(tree))


@pytest.mark.slow
async def test_a_host_kernel_starts_in_the_notebooks_directory(
    kernel_accounts: tuple[str, ...], jupyter_env: dict[str, str], store: Any
) -> None:
    """A host kernel (run as the user's own account by the root gateway) starts in the
    notebook's directory too; since root opens the path, every step of it must be the
    account's (or root's): a directory of Bob's inside Alice's home is refused."""
    import orchestrator

    from .conftest import write_kernelspec
    from .homes import user_homes
    from .test_docker import run

    with user_homes({"alice": "ko-alice", "bob": "ko-bob"}) as homes:
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            "host-mapped",
            "orchestrator-local-provisioner",
            {"account": "ko-{username}", "working_dir_map": homes.working_dir_map()},
        )

        def start(*rel: str) -> tuple[Any, Any]:
            km = orchestrator.AsyncKernelManager(kernel_name="host-mapped", kernel_store=store)
            where = str(homes.server_dir("alice", *rel))
            env = {**os.environ, "KERNEL_USERNAME": "alice", "KERNEL_WORKING_DIR": where}
            return km, km.start_kernel(env=env)

        km, starting = start("sub")
        await starting
        try:
            code = (
                "import os, getpass\n"
                "print(os.getcwd(), getpass.getuser(), open('data.csv').read().count(chr(10)))"
            )
            out = (await run(km, code))["out"]
            assert out == f"{os.path.realpath(homes.kernel_dir('alice', 'sub'))} ko-alice 3\n"
        finally:
            await km.shutdown_kernel(now=True)

        planted = homes.server_dir("alice", "sub", "bobs")
        planted.mkdir()
        os.chown(planted, *_ids("ko-bob"))
        km, starting = start("sub", "bobs")
        with pytest.raises(KernelStartError, match="is not the kernel's account's"):
            await starting
        assert await store.list() == []


def _ids(account: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(account)
    return entry.pw_uid, entry.pw_gid


def test_where_a_pod_with_claims_may_run_and_what_a_pending_one_says() -> None:
    """provisioners.kubernetes.storage: the node affinity that pins a kernel pod to the
    node holding its ReadWriteOnce claim (ANDed into each of the operator's terms), the
    refusal when two claims are held on different nodes, and the Pending message."""
    from provisioners.kubernetes.storage import Claim, claims_of, pending_hint, pinned_affinity

    volumes = [
        {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
        {"name": "data", "persistent_volume_claim": {"claim_name": "shared-data"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    assert claims_of(volumes) == [("home", "claim-alice"), ("data", "shared-data")]
    home = Claim("home", "claim-alice", read_write_once=True, node="node-7")
    data = Claim("data", "shared-data", read_write_once=False)
    operator = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["b"]}]},
                ]
            }
        }
    }
    pinned = pinned_affinity(operator, [home, data])
    terms = pinned["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    pin = {"key": "metadata.name", "operator": "In", "values": ["node-7"]}
    assert all(term["matchFields"] == [pin] for term in terms["nodeSelectorTerms"])
    assert "matchFields" not in str(operator)  # the kernelspec's own is left alone
    assert pinned_affinity({}, [data]) == {}
    other = Claim("scratch", "claim-alice-scratch", read_write_once=True, node="node-2")
    with pytest.raises(KernelStartError, match="held on different nodes"):
        pinned_affinity({}, [home, other])
    assert pending_hint([home, data], colocated=False) == (
        "; ReadWriteOnce claim claim-alice (volume home) is mounted on node node-7"
        " (set colocate_with_claims to start kernels there)"
    )
    assert pending_hint([home], colocated=True) == "; it mounts claim claim-alice (volume home)"
    assert pending_hint([], colocated=False) == ""
