"""The benchmarks run (issue 7: each "runnable with one command, printing a table"): every script
in ``bench/`` with its one command, at a size that takes seconds, in a process of its own.

The figures are not checked (a timed assertion does not belong in a test); what is checked is
what a reader of the table relies on: every row is there, the counts add up, and the benches'
own cross-checks hold (the floor's replay completes what the service completed, the restart
reconnects every session without a QR, the API answers every request). A bench broken by a
change to the service fails here, not on the day somebody wants its figures.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"
PG_ADMIN_URL = os.environ.get("WANOTIFY_TEST_DATABASE_URL", "")

pytestmark = pytest.mark.skipif(
    not PG_ADMIN_URL, reason="the benches need WANOTIFY_TEST_DATABASE_URL (.ci/run sets it)"
)

Table = list[dict[str, str]]


def run_bench(command: str) -> str:
    """``python bench/<command>``: its standard output, once it exited with 0."""
    script, *args = shlex.split(command)
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANOTIFY_TEST_DATABASE_URL": PG_ADMIN_URL},
        check=False,
    )
    tail = result.stderr[-3000:]
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{tail}"
    return result.stdout


def tables(output: str) -> list[Table]:
    """Every Markdown table in ``output``: its rows as {header: cell}."""
    found: list[Table] = []
    lines = output.splitlines()
    for i, line in enumerate(lines[:-1]):
        if not (line.startswith("|") and lines[i + 1].startswith("|---")):
            continue
        header = cells(line)
        rows: Table = []
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            rows.append(dict(zip(header, cells(row), strict=True)))
        found.append(rows)
    return found


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def number(cell: str) -> float:
    return float(cell.split()[0].replace(",", "").rstrip("x%"))


def test_pipeline_prints_every_phase_on_both_databases() -> None:
    out = run_bench("pipeline.py --notifications 100 --seconds 0.5 --orgs 2 --producers 4")
    (table,) = tables(out)
    rows = {(r["backend"], r["figure"]): r for r in table}
    for backend in ("postgresql", "sqlite"):
        for figure in ("enqueue", "drain", "end-to-end"):
            assert number(rows[backend, figure]["n"]) == 100
            assert number(rows[backend, figure]["per second"]) > 0
        steady = rows[backend, "steady"]
        assert number(steady["p50 ms"]) <= number(steady["p99 ms"])


def test_pipeline_puts_the_peers_beside_ours() -> None:
    pytest.importorskip("pgqueuer", reason="the peers need the bench extra: .[bench]")
    pytest.importorskip("procrastinate", reason="the peers need the bench extra: .[bench]")
    out = run_bench(
        "pipeline.py --peers --no-sqlite --notifications 100 --seconds 0.5 --orgs 2 --producers 4"
    )
    (table,) = tables(out)
    peers = {r["backend"]: r for r in table if r["figure"] == "drain no-op"}
    assert set(peers) == {"pgqueuer", "procrastinate"}
    ours = number(next(r for r in table if r["figure"] == "drain")["per second"])
    for peer in peers.values():
        assert number(peer["n"]) == 100
        # our drain ÷ theirs, as printed
        assert number(peer["ours ÷ this"]) == pytest.approx(
            ours / number(peer["per second"]), rel=0.02, abs=0.01
        )


def test_latency_curve_has_a_row_per_rate() -> None:
    out = run_bench("latency.py --rates 40,20 --seconds 1 --orgs 2")
    (table,) = tables(out)
    assert [number(r["offered/s"]) for r in table] == [20, 40]  # lowest first
    for row in table:
        assert number(row["achieved/s"]) > 0
        assert row["targets met"] in {"yes", "no"}
        met = number(row["p50 ms"]) <= 10 and number(row["p99 ms"]) <= 50
        assert (row["targets met"] == "yes") == met


def test_latency_steps_on_sqlite() -> None:
    out = run_bench("latency.py --sqlite --rate 20 --seconds 1 --orgs 2")
    steps, statements = tables(out)
    assert {r["step"] for r in steps} == {
        "end-to-end (scheduled → accepted)",
        "enqueue",
        "claim",
        "message row",
    }
    assert any(r["SQL statement"].startswith("INSERT notification_queue") for r in statements)


def test_quiet_service_cost() -> None:
    out = run_bench("quiet.py --rates 20 --seconds 1 --orgs 2")
    (table,) = tables(out)
    assert [number(r["offered/s"]) for r in table] == [20]
    assert number(table[0]["ms each"]) > 0


def test_fixed_costs_of_a_transaction() -> None:
    out = run_bench("fixedcost.py --rounds 1 --count 20")
    (table,) = tables(out)
    assert {r["operation"] for r in table} == {
        f"{what}: {how}"
        for what in ("statement", "transaction")
        for how in ("service session", "core connection", "driver")
    } | {"round trip: driver SELECT 1"}
    assert all(number(r["median µs"]) > 0 for r in table)


def test_row_costs_of_each_form() -> None:
    out = run_bench("rowcost.py --rounds 1 --times 1")
    (table,) = tables(out)
    forms: dict[str, set[str]] = {}
    for row in table:
        forms.setdefault(row["step"], set()).add(row["form"])
    assert forms and all(f == {"before", "today"} for f in forms.values())


def test_floor_replay_completes_what_the_service_did() -> None:
    out = run_bench("floor.py --notifications 200 --producers 4 --orgs 2 --rounds 1")
    (table,) = tables(out)
    assert {r["who"] for r in table} == {"service", "replay"}
    assert {number(r["completed"]) for r in table} == {200}


def test_scaleout_with_one_worker_process() -> None:
    out = run_bench(
        "scaleout.py --workers 1 --notifications 200 --seconds 0.5 --orgs 2 --producers 4"
    )
    (table,) = tables(out)
    assert [r["worker processes"] for r in table] == ["1"]
    assert number(table[0]["end-to-end/s"]) > 0


def test_sessions_reconnect_without_a_qr_on_both_databases() -> None:
    out = run_bench("sessions.py --sessions 20 --restart 10 --warmup 2 --concurrency 4 --sqlite")
    (table,) = tables(out)
    restarts = {r["backend"]: r for r in table if r["figure"] == "restart → all connected"}
    assert set(restarts) == {"postgresql", "sqlite"}
    for row in restarts.values():
        assert "10 connected, 0 via qr_pending, 10 same WhatsApp id, 0 new devices" in row["note"]
    assert {r["backend"] for r in table if r["figure"] == "RSS per session, ours"} == {
        "postgresql",
        "sqlite",
    }


def test_api_answers_every_request() -> None:
    out = run_bench("api.py --rate 20 --seconds 1 --connections 2")
    load = tables(out)[0]
    assert [(r["ok"], r["errors"]) for r in load] == [("20", "0")]


def test_stacks_split_a_profile_by_layer(tmp_path: Path) -> None:
    profile = tmp_path / "stacks.txt"
    profile.write_text(
        "run (asyncio/runners.py:118);execute (sqlalchemy/orm/session.py:2555) 3\n"
        "run (asyncio/runners.py:118);_claim (wanotify/notifications/dispatcher.py:230) 1\n"
    )
    out = run_bench(f"stacks.py {profile} --layers")
    (table,) = tables(out)
    rows = {r["layer"]: r for r in table}
    assert rows["SQLAlchemy"]["self"] == "75.0%"
    assert rows["wanotify"]["self"] == "25.0%"
    assert rows["SQLAlchemy"]["anywhere on the stack"] == "75.0%"
    assert "event loop (uvloop, asyncio)" not in rows  # never the innermost frame here
