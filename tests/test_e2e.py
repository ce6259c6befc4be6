"""End to end over real HTTP: ``wanotify serve`` as a subprocess, driven like a host app would.

Platform org (CLI) → customer org (API, trial: welcome through the platform's number) → login →
link by QR → template → notification → sent → delivered → read; then a restart, after which the
session is connected again without a new QR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.support import DRIVER, WANOTIFY, free_port

pytestmark = pytest.mark.e2e
T = TypeVar("T")
PLATFORM_PHONE = "+14155550100"
CUSTOMER_PHONE = "+14155550111"
OWNER_PHONE = "+12025550143"


def until(check: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Server:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [WANOTIFY, "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        until(ready, "server ready", timeout=30)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0, self.log.read_text()[-3000:]


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"  # empty: serve migrates it
    else:
        url = request.getfixturevalue("empty_pg_url")  # empty too: serve migrates it
    return {
        **os.environ,
        "WANOTIFY_DATA_DIR": str(tmp_path / "data"),
        "WANOTIFY_DATABASE_URL": url,
        "WANOTIFY_JWT_SECRET": "e2e-secret-" + "y" * 40,
        "WANOTIFY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "WANOTIFY_SIM_DELIVERY_DELAY_SECONDS": "0.05",
        "WANOTIFY_LOG_JSON": "true",
    }


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    srv = Server(env, free_port(), tmp_path / "server.log")
    srv.start()
    yield srv
    if srv.proc and srv.proc.poll() is None:
        srv.proc.kill()


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [WANOTIFY, *args, "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def login(http: httpx.Client, email: str, password: str) -> dict[str, str]:
    response = http.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def link(http: httpx.Client, headers: dict[str, str], phone: str) -> dict[str, Any]:
    init = http.post("/api/sessions/init", headers=headers)
    assert init.status_code in (200, 201), init.text
    assert init.json()["status"] == "qr_pending"
    scan = http.post(f"/sim/phones/{phone}/scan", json={"qr_code": init.json()["qr_code"]})
    assert scan.status_code == 200, scan.text

    def connected() -> dict[str, Any] | None:
        state = http.get("/api/sessions/current", headers=headers).json()
        return state if state["status"] == "connected" else None

    return until(connected, f"{phone} connected")


@pytest.mark.parametrize("env", ["sqlite", "postgresql"], indirect=True)
def test_whole_loop_and_restart(env: dict[str, str], server: Server) -> None:
    platform = cli(
        env,
        "admin",
        "create-org",
        "MyFleet Pro",
        "--owner-email",
        "ops@myfleet.test",
        "--password",
        "platform-pass",
        "--platform",
    )
    assert platform["org_id"]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        ops = login(http, "ops@myfleet.test", "platform-pass")
        link(http, ops, PLATFORM_PHONE)

        created = http.post(
            "/api/orgs",
            json={
                "name": "Kilimanjaro Haulage",
                "plan": "trial",
                "owner": {
                    "email": "amina@haulage.test",
                    "full_name": "Amina Odhiambo",
                    "phone": OWNER_PHONE,
                    "password": "owner-pass-123",
                },
            },
            headers=ops,
        )
        assert created.status_code == 201, created.text
        welcome_inbox = until(
            lambda: http.get(f"/sim/phones/{OWNER_PHONE}/inbox").json(), "trial welcome"
        )
        assert "Amina" in welcome_inbox[0]["text"] and welcome_inbox[0]["from"] == PLATFORM_PHONE

        owner = login(http, "amina@haulage.test", "owner-pass-123")
        linked = link(http, owner, CUSTOMER_PHONE)
        template = http.post(
            "/api/templates",
            json={
                "name": "fuel_card_limit",
                "category": "general",
                "message_template": "Hi {{driver_name}}, fuel card {{card}} is at {{pct}}%.",
                "variables": [
                    {"name": "driver_name", "example": "Joe", "required": True},
                    {"name": "card", "example": "*4411", "required": True},
                    {"name": "pct", "example": "90", "required": True},
                ],
            },
            headers=owner,
        )
        assert template.status_code == 201, template.text
        queued = http.post(
            "/api/notifications",
            json={
                "notification_type": "fuel_card_limit",
                "recipient_phone": "(415) 555-0123",
                "template": "fuel_card_limit",
                "message_data": {"driver_name": "Juma", "card": "*4411", "pct": "92"},
            },
            headers=owner,
        )
        assert queued.status_code == 202, queued.text
        nid = queued.json()["id"]

        def completed() -> dict[str, Any] | None:
            n = http.get(f"/api/notifications/{nid}", headers=owner).json()
            return n if n["status"] == "completed" else None

        done = until(completed, "notification completed")

        def message_status(status: str) -> Callable[[], dict[str, Any] | None]:
            def check() -> dict[str, Any] | None:
                m = http.get(f"/api/messages/{done['message_id']}", headers=owner).json()
                return m if m["status"] == status else None

            return check

        delivered = until(message_status("delivered"), "delivered")
        assert delivered["message_body"] == "Hi Juma, fuel card *4411 is at 92%."
        inbox = http.get(f"/sim/phones/{DRIVER}/inbox").json()
        assert [m["whatsapp_message_id"] for m in inbox] == [delivered["whatsapp_message_id"]]
        http.post(
            f"/sim/phones/{DRIVER}/read", json={"message_ids": [inbox[0]["whatsapp_message_id"]]}
        )
        read = until(message_status("read"), "read")
        assert [s["status"] for s in read["timeline"]] == ["queued", "sent", "delivered", "read"]
        metrics = http.get("/metrics").text
        assert 'wanotify_messages{status="read"}' in metrics

    server.stop()
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        owner = login(http, "amina@haulage.test", "owner-pass-123")
        statuses: list[str] = []

        def reconnected() -> dict[str, Any] | None:
            state = http.get("/api/sessions/current", headers=owner).json()
            statuses.append(state["status"])
            return state if state["status"] == "connected" else None

        again = until(reconnected, "reconnected after restart")
        assert again["whatsapp_id"] == linked["whatsapp_id"]
        assert "qr_pending" not in statuses and again["qr_code"] is None
        assert http.get("/api/sessions/current/qr.svg", headers=owner).status_code == 404
        inbox = http.get(f"/sim/phones/{DRIVER}/inbox").json()
        assert len(inbox) == 1  # nothing sent twice across the restart
    server.stop()
