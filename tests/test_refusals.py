"""Hostile input to the provisioners' own parsers and policies, refused exactly.

These run the real parsing and checking code in-process (no cluster, no engine):
what a start may ask of sbatch, who may pick a profile, which accounts a Slurm
kernelspec on the login node may run as. Each case names the exact refusal.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import KernelStartError, NotEntitledError
from provisioners.common.entitlement import check_profile_entitlement
from provisioners.slurm import batch

ALLOW = ["--mail-type=*", "--mail-user=*", "--a*", "--begin=*", "--nice*"]


def request(extra: str, *, allow: list[str] = ALLOW, spec_args: list[str] = ()) -> Any:  # type: ignore[assignment]
    return batch.job_request(
        base={"time": "01:00:00", "mem": "1G"},
        profiles={},
        sbatch_args=list(spec_args),
        client_env={"KERNEL_SLURM_SBATCH_ARGS": extra},
        overridable=["time"],
        choices={},
        maxima={"time": "02:00:00"},
        sbatch_arg_allowlist=allow,
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--arr=0-9", "--arr abbreviates --array"),
        ("--ar=0-9", "--ar abbreviates --array"),
        ("--acc=other", "--acc abbreviates --account or --acctg-freq"),
        ("--account=other", "--account cannot be given by a start (use KERNEL_SLURM_ACCOUNT"),
        ("--array=0-9", "--array is set by the provisioner"),
        ("--array 0-9", "--array is set by the provisioner"),
        ("--begin=now --begin=now", "--begin is given twice"),
        ("--time=99:00:00", "--time cannot be given by a start (use KERNEL_SLURM_TIME"),
        ("--time 99:00:00", "--time cannot be given by a start"),
        ("--cpus-per-task=64", "use KERNEL_SLURM_CPUS"),
        ("--mem-per-cpu=100G", "--mem-per-cpu cannot be given by a start"),
        ("--ntasks=64", "--ntasks cannot be given by a start"),
        ("--exclusive", "--exclusive cannot be given by a start"),
        ("--requeue", "--requeue is set by the provisioner"),
        ("--wait", "--wait is set by the provisioner"),
        ("--export=ALL", "--export is set by the provisioner"),
        ("--get-user-env", "--get-user-env is set by the provisioner"),
        ("--clusters=other", "--clusters is set by the provisioner"),
        ("-a 0-9", "must look like --flag or --flag=value"),
        ("-t1", "must look like --flag or --flag=value"),
        ("--", "must look like --flag"),
        ("--mail-type", "--mail-type needs a value"),
        ("--mail-type --begin=now", "--mail-type needs a value"),
        ("--parsable=1", "--parsable takes no value"),
        ("--mail-user=a;id", "no spaces or shell characters"),
        ("--mail-user=$(id)", "no spaces or shell characters"),
        ("--xyz=1", "--xyz is not an sbatch option"),
        ("--MAIL-TYPE=ALL", "must look like --flag"),
        ("--mail-type=ALL --hold", "'--hold' is not allowed"),
        ("--bb=capacity=100T", "--bb cannot be given by a start"),
        ("--wait-all-nodes", "--wait-all-nodes needs a value"),
    ],
)
def test_extra_sbatch_arguments_are_read_as_sbatch_reads_them(extra: str, message: str) -> None:
    with pytest.raises(batch.ResourceError) as info:
        request(extra)
    assert message in str(info.value)


def test_a_start_cannot_override_the_kernelspecs_own_sbatch_arguments() -> None:
    with pytest.raises(batch.ResourceError, match="--nice is given twice"):
        request("--nice=-10", spec_args=["--nice=10"])
    assert request("--begin=now", spec_args=["--nice=10"]).extra_args == [
        "--nice=10",
        "--begin=now",
    ]


def test_allowed_sbatch_arguments_reach_sbatch_in_full() -> None:
    job = request("--mail-type NONE --nice=5 --begin=now")
    assert job.extra_args == ["--mail-type=NONE", "--nice=5", "--begin=now"]
    # the checked resources come first, and nothing after them sets them again
    assert job.sbatch_args()[:2] == ["--time=01:00:00", "--mem=1G"]


@pytest.mark.parametrize(
    ("spec_args", "message"),
    [
        (["--time=99:00:00"], "set time through the kernelspec's resources"),
        (["--part=debug"], "--part abbreviates --partition"),
        (["--wr=id"], "--wr abbreviates --wrap"),
        (["--uid=0"], "--uid is set by the provisioner"),
    ],
)
def test_the_kernelspecs_own_sbatch_arguments_are_checked_too(
    spec_args: list[str], message: str
) -> None:
    with pytest.raises(batch.ResourceError) as info:
        request("", spec_args=spec_args)
    assert message in str(info.value)


GPU = {"gres": "gpu:1", "allowed": ["alice", "@physics"]}


@pytest.mark.parametrize(
    ("env", "multi_tenant", "refused"),
    [
        ({"KERNEL_USERNAME": "bob"}, True, True),
        ({"KERNEL_USERNAME": "bob", "KERNEL_USER_GROUPS": "chemistry"}, True, True),
        ({"KERNEL_USERNAME": "BOB"}, True, True),
        ({}, True, True),
        ({"KERNEL_USERNAME": "alice"}, True, False),
        ({"KERNEL_USERNAME": "Alice"}, True, False),
        ({"KERNEL_USERNAME": "carol", "KERNEL_USER_GROUPS": "hpc,Physics"}, True, False),
        ({"KERNEL_USERNAME": "admin"}, True, False),
        ({"KERNEL_USERNAME": "bob"}, False, False),  # a single user's orchestrator
    ],
)
def test_profiles_are_limited_to_their_allowed_users(
    env: dict[str, str], multi_tenant: bool, refused: bool
) -> None:
    if refused:
        with pytest.raises(NotEntitledError, match="Slurm profile 'gpu' is not available"):
            check_profile_entitlement("Slurm", "gpu", GPU, env, multi_tenant)
    else:
        check_profile_entitlement("Slurm", "gpu", GPU, env, multi_tenant)
    with pytest.raises(KernelStartError, match=r"profile 'x'.allowed must be a list"):
        check_profile_entitlement("Slurm", "x", {"allowed": "alice"}, env, multi_tenant)


def test_a_profiles_allowed_list_never_reaches_sbatch() -> None:
    job = batch.job_request(
        base={},
        profiles={"gpu": GPU},
        sbatch_args=[],
        client_env={"KERNEL_SLURM_PROFILE": "gpu"},
        overridable=[],
        choices={},
        maxima={},
        sbatch_arg_allowlist=[],
    )
    assert job.resources == {"gres": "gpu:1"} and job.extra_args == []


def test_the_gateway_sets_who_and_which_groups_not_the_client() -> None:
    from orchestrator.gateway.environment import kernel_environment

    forged = {"KERNEL_USERNAME": "alice", "KERNEL_USER_GROUPS": "physics"}
    env = kernel_environment({}, forged, "bob", ("chemistry",))
    assert env["KERNEL_USERNAME"] == "bob" and env["KERNEL_USER_GROUPS"] == "chemistry"


def slurm_provisioner(multi_tenant: bool, **config: Any) -> Any:
    from jupyter_client.kernelspec import KernelSpec

    import orchestrator
    from provisioners.slurm.provisioner import SlurmProvisioner

    km = orchestrator.AsyncKernelManager()
    km.multi_tenant = multi_tenant
    spec = KernelSpec(argv=["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    return SlurmProvisioner(
        kernel_id="k1", kernel_spec=spec, parent=km, on_login_node=True, **config
    )


@pytest.mark.parametrize(
    ("multi_tenant", "config", "message"),
    [
        (True, {}, "would share it with each other and with the gateway's secrets"),
        (True, {"user": "{username}"}, "and certificate_authority cannot apply there"),
        (False, {"user": "{username}"}, "and certificate_authority cannot apply there"),
        (True, {"user_map": {"alice": "alice"}}, "cannot apply there"),
        (False, {"identity_file": "/keys/{username}"}, "cannot apply there"),
    ],
)
async def test_slurm_on_the_login_node_never_shares_the_gateways_account(
    multi_tenant: bool, config: dict[str, Any], message: str
) -> None:
    prov = slurm_provisioner(multi_tenant, **config)
    with pytest.raises(KernelStartError) as info:
        await prov.pre_launch(env={"KERNEL_USERNAME": "alice"})
    assert message in str(info.value)


async def test_slurm_on_the_login_node_shared_only_when_the_operator_says_so() -> None:
    prov = slurm_provisioner(True, shared_account=True)
    prov._check_login_node_account()  # accepted, explicitly
    slurm_provisioner(False)._check_login_node_account()  # one user: their own account


def test_the_agent_reply_reader_holds_a_bounded_line() -> None:
    """The SSH agent runs in the kernel's account: whatever runs there can write to its
    stdout. 100 MB without a newline costs at most the bound, then an error."""
    import resource

    from provisioners.ssh.agent import MAX_REPLY_BYTES, LineReader, ReplyTooLong

    reader = LineReader(MAX_REPLY_BYTES)
    assert reader.feed(b'{"id": 1}\n{"id"') == [b'{"id": 1}']
    assert reader.feed(b": 2}\n\n") == [b'{"id": 2}', b""]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chunk = b"x" * 65536
    fed = 0
    with pytest.raises(ReplyTooLong, match=f"more than {MAX_REPLY_BYTES} bytes"):
        while fed < 100 * 1024 * 1024:
            reader.feed(chunk)
            fed += len(chunk)
    assert fed <= MAX_REPLY_BYTES
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 4 * MAX_REPLY_BYTES // 1024
    assert reader.feed(b"ok\n") == [b"ok"]  # nothing of the long line is kept


def test_a_users_byte_budget_delays_what_passes_it() -> None:
    from orchestrator.gateway.fairness import ByteBudget, UserBudgets

    budget = ByteBudget(rate=1000, burst=1000)
    assert budget.delay_for(600) == 0.0
    assert budget.delay_for(400) == 0.0
    assert budget.delay_for(500) == pytest.approx(0.5, abs=0.05)  # in debt: wait
    users = UserBudgets()
    assert users.delay_for("alice", 10**9, rate=0) == 0.0  # 0: no limit
    assert users.delay_for("alice", 2000, rate=1000) == pytest.approx(1.0, abs=0.05)
    assert users.delay_for("bob", 500, rate=1000) == 0.0  # budgets are per user


def test_the_login_node_agent_gets_no_orchestrator_secret() -> None:
    """sbatch exports the agent's environment into every job: on the login node the
    agent is a local process, and it gets a login shell's variables, not ours."""
    from provisioners.ssh.localhost import agent_environment

    ours = {
        "PATH": "/usr/bin",
        "HOME": "/srv/ko",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "LC_ALL": "C.UTF-8",
        "KERNEL_ORCHESTRATOR_TOKEN": "admin-secret",
        "KERNEL_ORCHESTRATOR_STORE": "postgresql://ko@db/k",
        "PGPASSWORD": "db-secret",
        "JUPYTERHUB_API_TOKEN": "hub-secret",
        "AWS_SECRET_ACCESS_KEY": "cloud-secret",
    }
    assert agent_environment(ours) == {
        "PATH": "/usr/bin",
        "HOME": "/srv/ko",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "LC_ALL": "C.UTF-8",
    }
