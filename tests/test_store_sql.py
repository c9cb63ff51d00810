"""The SQL stores' shared contract, on SQLite and on a real PostgreSQL server.

Records, fenced writes, claims, reservations against limits and pool hand-outs
behave the same on both; the concurrency tests race real processes (as replicas on
several machines would) and check that nobody wins twice.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys

import pytest

from orchestrator.errors import FencedError, KernelLimitError, OwnedElsewhereError, StoreError
from orchestrator.store import KernelRecord, Limits, open_store
from orchestrator.store.lease import Holder

A = Holder("holder-a", "gateway", "host-a")
B = Holder("holder-b", "gateway", "host-b")


def record(kernel_id: str, **labels: str) -> KernelRecord:
    return KernelRecord(
        kernel_id, "python3", "p", provisioner_info={"key": b"\x00secret"}, labels=labels
    )


async def test_records_leases_and_fencing(sql_store_url: str) -> None:
    store = open_store(sql_store_url)
    try:
        assert store.schema_version == 4
        lease = await store.insert(record("k1", owner="alice"), A, 30)
        got = await store.get("k1")
        assert got is not None and got.provisioner_info["key"] == b"\x00secret"
        assert got.owner["holder_id"] == "holder-a" and got.generation == 1
        with pytest.raises(OwnedElsewhereError, match="owned by gateway"):
            await store.claim("k1", B, 30)
        taken = await store.claim("k1", B, 30, force=True)
        assert taken.generation == 2
        with pytest.raises(FencedError, match="generation 2"):
            await store.save(record("k1"), lease)
        assert await store.renew("holder-b", 30) == {"k1": 2}
        assert await store.renew("holder-a", 30) == {}
        owners = await store.ownerships(["k1", "missing"])
        assert list(owners) == ["k1"] and owners["k1"].generation == 2
        assert owners["k1"].owner == B and owners["k1"].live()
        await store.touch("k1", 5e9)
        assert (await store.list())[0].last_activity == 5e9
        assert store.release_now(taken) and await store.delete("k1")
        assert await store.get("k1") is None
    finally:
        store.close()


async def test_limits_count_reservations_and_records(sql_store_url: str) -> None:
    store = open_store(sql_store_url)
    limits = Limits(total=3, per_tenant=2, pool_size=1)
    try:
        await store.reserve("r1", tenant="alice", pool=None, limits=limits, seconds=60)
        await store.insert(record("r1", owner="alice"), A, 30)  # ends r1's reservation
        await store.reserve("r2", tenant="alice", pool=None, limits=limits, seconds=60)
        with pytest.raises(KernelLimitError, match="user 'alice' already has the maximum of 2"):
            await store.reserve("r3", tenant="alice", pool=None, limits=limits, seconds=60)
        await store.reserve("r3", tenant="bob", pool=None, limits=limits, seconds=60)
        with pytest.raises(KernelLimitError, match="maximum of 3 kernels"):
            await store.reserve("r4", tenant="carol", pool=None, limits=limits, seconds=60)
        await store.unreserve("r3")
        await store.reserve("r4", tenant="carol", pool=None, limits=limits, seconds=60)
        # Pooled kernels count against their pool, not the totals.
        await store.reserve("p1", tenant=None, pool="python3", limits=limits, seconds=60)
        with pytest.raises(KernelLimitError, match="warm pool 'python3'"):
            await store.reserve("p2", tenant=None, pool="python3", limits=limits, seconds=60)
        await store.insert(record("p1", pool="python3"), A, 30)
        assert await store.count(pool="python3") == 1 and await store.count() == 3
        # An expired reservation counts no more.
        await store.unreserve("r4")
        await store.reserve("r5", tenant="dave", pool=None, limits=limits, seconds=0.01)
        await asyncio.sleep(0.05)
        assert await store.count() == 2
        # Handing the pooled kernel out: once, fencing its previous owner.
        lease = await store.claim_pooled("python3", "erin", B, 30)
        assert lease is not None and lease.generation == 2 and lease.holder_id == "holder-b"
        assert await store.claim_pooled("python3", "frank", B, 30) is None
        got = await store.get("p1")
        assert got is not None and got.labels == {"owner": "erin"}
        assert await store.count(pool="python3") == 0 and await store.count(tenant="erin") == 1
        # A hand-out counts against the totals too: with them reached, none is made.
        await store.insert(record("p2", pool="python3"), A, 30)
        with pytest.raises(KernelLimitError, match="maximum of 3 kernels"):
            await store.claim_pooled("python3", "frank", B, 30, limits=Limits(total=3))
        assert await store.count(pool="python3") == 1
    finally:
        store.close()


def _race(url: str, env: dict[str, str], who: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    os.environ.update(env)

    async def main() -> list[str]:
        store = open_store(url)
        limits = Limits(total=5, per_tenant=5)
        won = []
        for i in range(10):
            try:
                if i == 3:  # pooled hand-outs count against the same limits, in between
                    lease = await store.claim_pooled(
                        "pool", "alice", Holder(who, "gateway"), 30, limits=limits
                    )
                    if lease is not None:
                        won.append(f"pooled-{lease.kernel_id}")
                    continue
                await store.reserve(
                    f"{who}-{i}", tenant="alice", pool=None, limits=limits, seconds=60
                )
                won.append(f"reserve-{i}")
            except KernelLimitError:
                pass
        store.close()
        return won

    queue.put(asyncio.run(main()))


def test_processes_racing_never_exceed_a_limit(sql_store_url: str) -> None:
    store = open_store(sql_store_url)
    for i in range(3):
        asyncio.run(store.insert(record(f"pooled{i}", pool="pool"), A, 30))
    store.close()
    env = {k: v for k, v in os.environ.items() if k.startswith(("PG", "JUPYTER"))}
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(sql_store_url, env, f"w{n}", queue)) for n in range(6)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    reserved = [w for won in results for w in won if w.startswith("reserve")]
    pooled = [w for won in results for w in won if w.startswith("pooled")]
    assert len(reserved) + len(pooled) == 5, results
    assert len(set(pooled)) == len(pooled), results  # no pooled kernel handed out twice
    assert set(pooled) <= {"pooled-pooled0", "pooled-pooled1", "pooled-pooled2"}, results


def test_postgres_url_errors_name_the_store_never_the_password(postgres) -> None:  # type: ignore[no-untyped-def]
    url = f"postgresql://ko:wrong-password@127.0.0.1:{postgres.port}/postgres"
    with pytest.raises(StoreError) as e:
        open_store(url)
    assert "wrong-password" not in str(e.value)
    assert f"127.0.0.1:{postgres.port}" in str(e.value) and "***" in str(e.value)
    dead = f"postgresql://ko@127.0.0.1:{postgres.port + 1 if postgres.port < 65535 else 1}/x"
    with pytest.raises(StoreError, match="unreachable"):
        open_store(dead)


def test_redacted_postgres_urls_hide_every_password() -> None:
    from orchestrator.store.postgres import redact_url

    url = "postgresql://ko:pw1@[::1]:5432/db?sslmode=require&password=pw2&sslpassword=pw3"
    shown = redact_url(url)
    assert not any(p in shown for p in ("pw1", "pw2", "pw3")), shown
    assert shown.startswith("postgresql://ko:***@[::1]:5432/db?sslmode=require")


@pytest.mark.parametrize(
    ("url", "env", "refused"),
    [
        ("postgresql://ko@db.internal:5432/k", {}, True),
        ("postgresql://ko@10.1.2.3/k", {}, True),
        ("postgresql://ko@/k?host=db.internal", {}, True),
        ("postgresql://ko@localhost/k?host=db.internal", {}, True),
        ("postgresql://ko@db.internal/k?sslmode=verify-full&sslrootcert=/ca.crt", {}, False),
        ("postgresql://ko@db.internal/k?sslmode=disable", {}, False),
        ("postgresql://ko@db.internal/k", {"PGSSLMODE": "verify-full"}, False),
        ("postgresql://ko@127.0.0.1:5432/k", {}, False),
        ("postgresql://ko@[::1]:5432/k", {}, False),
        ("postgresql://ko@localhost/k", {}, False),
        ("postgresql:///k?host=/run/postgresql", {}, False),
        # read as libpq reads them: the URL's hosts before $PGHOST, every host of a list
        ("postgresql://ko@db.internal/k", {"PGHOST": "localhost"}, True),
        ("postgresql://ko@127.0.0.1:5432,db.internal:5432/k", {}, True),
        ("postgresql://ko@[::1]:5432,[fd00::5]:5432/k", {}, True),
        ("postgresql://ko@127.0.0.1:5432,localhost:5433/k", {}, False),
        ("postgresql:///k", {"PGHOST": "db.internal"}, True),
        ("postgresql://ko@127.0.0.1.attacker.example/k", {}, True),
        ("postgresql://ko@localhost/k?hostaddr=10.0.0.5", {}, True),
        ("postgresql://ko@localhost/k", {"PGHOSTADDR": "10.0.0.5"}, True),
        ("postgresql:///k?service=prod", {}, True),
        ("postgresql://ko@localhost/k", {"PGSERVICE": "prod"}, True),
    ],
)
def test_a_store_over_a_network_must_verify_its_server(
    url: str, env: dict[str, str], refused: bool
) -> None:
    from orchestrator.store.postgres import check_server_verification

    if refused:
        with pytest.raises(StoreError, match="sslmode=verify-full&sslrootcert=") as info:
            check_server_verification(url, env)
        assert "would not verify the database server" in str(info.value)
    else:
        check_server_verification(url, env)


def test_postgres_connections_cannot_hang_a_replica(pg_store_url: str) -> None:
    """Statement and lock waits are bounded, and a dead peer is noticed by keepalives."""
    store = open_store(pg_store_url)
    try:
        with store._transaction() as cur:  # type: ignore[attr-defined]
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "20s"
            cur.execute("SHOW idle_in_transaction_session_timeout")
            assert cur.fetchone()[0] == "1min"
        # Keepalives are the client socket's (libpq's), not the server's settings.
        parameters = store._conn.info.get_parameters()  # type: ignore[attr-defined]
        assert parameters["keepalives_idle"] == "15"
        assert parameters["tcp_user_timeout"] == "30000"
    finally:
        store.close()


async def test_postgres_store_reconnects_after_a_server_restart(
    postgres, pg_store_url: str
) -> None:  # type: ignore[no-untyped-def]
    store = open_store(pg_store_url)
    try:
        await store.insert(record("survivor", owner="alice"), A, 30)
        await asyncio.to_thread(postgres.stop, kill=True)
        with pytest.raises(StoreError, match="unreachable"):
            await store.list()
        await asyncio.to_thread(postgres.start)
        records = await store.list()
        assert [r.kernel_id for r in records] == ["survivor"]
        assert await store.renew("holder-a", 30) == {"survivor": 1}
    finally:
        store.close()


def test_cli_takes_store_after_the_subcommand(sql_store_url: str) -> None:
    env = {**os.environ}
    env.pop("KERNEL_ORCHESTRATOR_STORE", None)
    for argv in (["list", "--store", sql_store_url], ["--store", sql_store_url, "list"]):
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli.main", *argv, "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"
