"""``wanotify demo``: seed a working demo (orgs, templates, a linked simulated phone, history).

Everything is looked up before it is made, so running the demo again reuses what the last run
left (orgs by owner email, templates by name, notifications by idempotency key) and a linked
session reconnects from its saved auth state instead of asking for a new QR.

The seeding runs a full ``Runtime`` (session manager + dispatcher), so the history it leaves is
real: messages went through the queue, the simulated network and its receipts, exactly as they
would in ``wanotify serve``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import func, select

from wanotify.auth.models import Profile
from wanotify.errors import InvalidInput, Unavailable
from wanotify.messages.models import WhatsAppMessage
from wanotify.notifications import service as notifications
from wanotify.notifications.models import Notification
from wanotify.orgs import service as orgs
from wanotify.orgs.models import Organization
from wanotify.phones import to_e164
from wanotify.runtime import Runtime
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.templates import rendering
from wanotify.templates.models import WhatsAppTemplate
from wanotify.transports.simulator import SimulatorNetwork

T = TypeVar("T")
Progress = Callable[[str], None]

PASSWORD = "demo-password"  # noqa: S105 (the demo prints it: it guards nothing)
PLATFORM_NAME = "MyFleet Pro (platform)"
PLATFORM_EMAIL = "platform@demo.wanotify.local"
PLATFORM_PHONE = "+14155550199"  # the operator's number: sends the trial welcome
DEMO_NAME = "Demo Fleet Co"
DEMO_EMAIL = "demo@demo.wanotify.local"
DEMO_OWNER_PHONE = "+14155550142"  # receives the trial welcome
DEMO_PHONE = "+14155550100"  # the number Demo Fleet Co links
READER = "+14155550123"  # this recipient reads what it gets, so the history shows "read"

LINK_TIMEOUT = 20.0
COMPLETE_TIMEOUT = 30.0
READ_TIMEOUT = 10.0
DONE = ("completed", "failed", "cancelled")


def _var(name: str, description: str, example: str, required: bool = True) -> dict[str, Any]:
    return {"name": name, "description": description, "example": example, "required": required}


ORG_TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "vehicle_inspection",
        "category": "maintenance",
        "message_template": (
            "🔍 Inspection booked: {{ vehicle_name }} at {{ station }} on {{ inspection_date }}."
            "{% if notes %}\nNotes: {{ notes }}{% endif %}\n\n"
            "Please bring the logbook.\n\nReply STOP to opt out."
        ),
        "variables": [
            _var("vehicle_name", "Vehicle name or fleet number", "Truck 07"),
            _var("station", "Inspection station", "Westlands testing centre"),
            _var("inspection_date", "Date and time of the inspection", "3 Dec 2026, 09:00"),
            _var("notes", "Anything the driver should know", "Check the brake lights", False),
        ],
    },
    {
        "name": "delivery_eta",
        "category": "trips",
        "message_template": (
            "📦 Hello {{ customer_name }}, order {{ order_id }} is on its way with "
            "{{ driver_name }}. Expected arrival: {{ eta }}.\n\nReply STOP to opt out."
        ),
        "variables": [
            _var("customer_name", "The customer's name", "Mary"),
            _var("order_id", "Order reference", "ORD-5521"),
            _var("driver_name", "The driver's first name", "John"),
            _var("eta", "Expected arrival time", "today around 15:30"),
        ],
    },
]

# (idempotency key, recipient, template or None for text, variables or the text)
SAMPLES: list[tuple[str, str, str | None, dict[str, str]]] = [
    (
        "demo:1",
        READER,
        "maintenance_due",
        {
            "vehicle_name": "Truck 07",
            "plate_number": "KDA 123X",
            "service_type": "Oil and filter change",
            "due_date": "2 Dec 2026",
            "odometer_km": "120,500",
        },
    ),
    (
        "demo:2",
        READER,
        "trip_assigned",
        {
            "driver_name": "John",
            "trip_id": "TRP-20931",
            "origin": "Mombasa depot",
            "destination": "Nairobi warehouse",
            "pickup_time": "26 Nov 2026, 07:30",
            "vehicle_name": "Truck 07 (KDA 123X)",
        },
    ),
    (
        "demo:3",
        "+12025550143",
        "license_expiry",
        {
            "driver_name": "Grace Otieno",
            "license_number": "DL-4471920",
            "expiry_date": "31 Dec 2026",
            "days_left": "30",
        },
    ),
    (
        "demo:4",
        "+12025550143",
        "maintenance_due",
        {
            "vehicle_name": "Van 12",
            "plate_number": "KCB 778Q",
            "service_type": "Tyre rotation",
            "due_date": "5 Dec 2026",
        },
    ),
    (
        "demo:5",
        "+13125550178",
        "trip_assigned",
        {
            "driver_name": "Peter",
            "trip_id": "TRP-20944",
            "origin": "Nakuru yard",
            "destination": "Eldoret depot",
            "pickup_time": "27 Nov 2026, 06:00",
            "vehicle_name": "Van 12 (KCB 778Q)",
        },
    ),
    (
        "demo:6",
        READER,
        "vehicle_inspection",
        {
            "vehicle_name": "Truck 07",
            "station": "Westlands testing centre",
            "inspection_date": "3 Dec 2026, 09:00",
        },
    ),
    (
        "demo:7",
        "+13125550178",
        "delivery_eta",
        {
            "customer_name": "Mary",
            "order_id": "ORD-5521",
            "driver_name": "Peter",
            "eta": "today around 15:30",
        },
    ),
    (
        "demo:8",
        "+12025550143",
        None,
        {"text": "Reminder: fuel cards are being replaced next week; collect yours at the depot."},
    ),
]


@dataclass
class DemoResult:
    """What the demo made or found, for the summary the CLI prints."""

    platform_org_id: uuid.UUID
    demo_org_id: uuid.UUID
    platform_login: str | None
    demo_login: str
    password: str
    session_status: str
    phone_number: str | None
    notifications: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "platform_org_id": str(self.platform_org_id),
            "demo_org_id": str(self.demo_org_id),
            "platform_login": self.platform_login,
            "login": self.demo_login,
            "password": self.password,
            "session_status": self.session_status,
            "phone_number": self.phone_number,
            "notifications": self.notifications,
            "messages": self.messages,
        }


async def poll(
    check: Callable[[], Awaitable[T | None]], *, within: float, interval: float = 0.05
) -> T | None:
    """Re-check until ``check`` returns something truthy; None after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(interval)


async def seed(settings: Settings, progress: Progress) -> DemoResult:
    """Seed the demo with a runtime of its own, stopped again before returning (the caller
    serves with a fresh one: the app's lifespan starts its runtime itself)."""
    try:
        # The samples are made-up history, not traffic: no pacing or warm-up while seeding
        # (the server started afterwards paces as configured).
        runtime = Runtime(settings.model_copy(update={"pacing": False}))
    except ValueError as exc:  # e.g. a transport that is not available
        raise InvalidInput(f"cannot start: {exc}") from exc
    progress(f"starting (database: {_safe_url(settings)}, transport: {settings.transport})")
    await runtime.start(workers=True)
    try:
        return await _seed(runtime, progress)
    finally:
        progress("stopping the seeding runtime")
        await runtime.stop()


async def _seed(rt: Runtime, progress: Progress) -> DemoResult:
    network = getattr(rt.transport, "network", None)
    simulated = isinstance(network, SimulatorNetwork)
    if not simulated:
        progress(
            f"transport is {rt.settings.transport}: not linking phones or sending samples; "
            "link a number from the console"
        )
    platform, platform_login = await ensure_platform(rt, progress)
    if isinstance(network, SimulatorNetwork):
        await link_phone(rt, network, platform.id, PLATFORM_PHONE, progress)
    demo = await ensure_demo_org(rt, progress)
    await ensure_templates(rt, demo.id, progress)
    session: WhatsAppSession | None = None
    if isinstance(network, SimulatorNetwork):
        session = await link_phone(rt, network, demo.id, DEMO_PHONE, progress)
        await send_samples(rt, demo.id, progress)
        await wait_for_queue(rt, [platform.id, demo.id], progress)
        await read_some(rt, network, demo.id, progress)
    return DemoResult(
        platform_org_id=platform.id,
        demo_org_id=demo.id,
        platform_login=platform_login,
        demo_login=DEMO_EMAIL,
        password=PASSWORD,
        session_status=session.status if session else "not linked",
        phone_number=session.phone_number if session else None,
        notifications=await _counts(rt, Notification, demo.id),
        messages=await _counts(rt, WhatsAppMessage, demo.id),
    )


# ---- orgs and templates ------------------------------------------------------------------------


async def _org_of_owner(rt: Runtime, email: str) -> Organization | None:
    async with rt.factory() as db:
        profile = await db.scalar(select(Profile).where(Profile.email == email))
        return await db.get(Organization, profile.org_id) if profile else None


async def ensure_platform(rt: Runtime, progress: Progress) -> tuple[Organization, str | None]:
    """The demo's platform org, or any platform org that already exists (there is only one).

    Returns it and the login the demo knows for it (None for someone else's platform org).
    """
    found = await _org_of_owner(rt, PLATFORM_EMAIL)
    if found is not None:
        progress(f"platform org: reusing {found.name!r}")
        return found, PLATFORM_EMAIL
    async with rt.factory() as db:
        other = await orgs.platform_org(db)
        if other is not None:
            progress(f"platform org: reusing the existing {other.name!r}")
            return other, None
        created = await orgs.create_org(
            db,
            name=PLATFORM_NAME,
            plan="enterprise",
            owner_email=PLATFORM_EMAIL,
            owner_password=PASSWORD,
            owner_name="Platform Ops",
            is_platform=True,
            actor="demo",
        )
    progress(f"platform org: created {created.org.name!r}")
    return created.org, PLATFORM_EMAIL


async def ensure_demo_org(rt: Runtime, progress: Progress) -> Organization:
    """The customer org on the trial plan; creating it queues the trial welcome."""
    found = await _org_of_owner(rt, DEMO_EMAIL)
    if found is not None:
        progress(f"demo org: reusing {found.name!r}")
        return found
    async with rt.factory() as db:
        created = await orgs.create_org(
            db,
            name=DEMO_NAME,
            plan="trial",
            owner_email=DEMO_EMAIL,
            owner_password=PASSWORD,
            owner_name="Dana",
            owner_phone=to_e164(DEMO_OWNER_PHONE),
            trial_days=rt.settings.trial_days,
            actor="demo",
        )
    rt.dispatcher.wake()
    note = " (trial welcome queued)" if created.welcome else ""
    progress(f"demo org: created {created.org.name!r}{note}")
    return created.org


async def ensure_templates(rt: Runtime, org_id: uuid.UUID, progress: Progress) -> None:
    """The org's own sample templates, checked like the API checks a new template."""
    async with rt.factory() as db:
        for spec in ORG_TEMPLATES:
            exists = await db.scalar(
                select(WhatsAppTemplate.id).where(
                    WhatsAppTemplate.org_id == org_id, WhatsAppTemplate.name == spec["name"]
                )
            )
            if exists is not None:
                continue
            rendering.validate_source(spec["message_template"])
            rendering.declared_matches_source(
                source=spec["message_template"], declared=spec["variables"]
            )
            db.add(WhatsAppTemplate(org_id=org_id, is_system=False, is_active=True, **spec))
            progress(f"template {spec['name']}: created")
        await db.commit()


# ---- the linked phone --------------------------------------------------------------------------


async def link_phone(
    rt: Runtime, network: SimulatorNetwork, org_id: uuid.UUID, phone: str, progress: Progress
) -> WhatsAppSession:
    """Link ``phone`` to the org's session the way a person would: init, then scan the QR.

    A session linked by an earlier run reconnects by itself on ``runtime.start``; it is only
    waited for. One linked elsewhere that no longer exists (unlinked, wiped) gets a new QR.
    """
    row, _ = await rt.sessions.init(org_id=org_id, actor="demo")
    row = await _settled(rt, org_id) or row
    if row.status not in ("connected", "qr_pending"):
        row, _ = await rt.sessions.init(org_id=org_id, actor="demo")
    if row.status == "connected":
        progress(f"session: {row.phone_number} already linked and connected")
        return row
    if row.status != "qr_pending" or not row.qr_code:
        raise Unavailable(f"could not start linking: session is {row.status} ({row.last_error})")
    progress(f"session: scanning the QR with the simulated phone {phone}")
    try:
        network.scan(phone, row.qr_code)
    except ValueError as exc:
        raise Unavailable(f"the simulated phone could not scan the QR: {exc}") from exc

    async def connected() -> WhatsAppSession | None:
        current = await rt.sessions.get(org_id=org_id)
        return current if current.status == "connected" else None

    linked = await poll(connected, within=LINK_TIMEOUT)
    if linked is None:
        raise Unavailable(f"the session did not connect within {LINK_TIMEOUT:g}s")
    progress(f"session: connected as {linked.phone_number}")
    return linked


async def _settled(rt: Runtime, org_id: uuid.UUID) -> WhatsAppSession | None:
    """Wait out ``connecting`` (a reconnect from saved auth state takes a moment)."""

    async def check() -> WhatsAppSession | None:
        current = await rt.sessions.get(org_id=org_id)
        return current if current.status != "connecting" else None

    return await poll(check, within=LINK_TIMEOUT)


# ---- history -----------------------------------------------------------------------------------


async def send_samples(rt: Runtime, org_id: uuid.UUID, progress: Progress) -> None:
    """Queue the sample notifications; their idempotency keys make a rerun queue nothing new."""
    created = 0
    async with rt.factory() as db:
        for key, to, template, data in SAMPLES:
            result = await notifications.enqueue(
                db,
                org_id=org_id,
                notification_type=template or notifications.TEXT_TYPE,
                recipient_phone=to_e164(to),
                template=template,
                text=data["text"] if template is None else None,
                message_data=data if template else None,
                idempotency_key=key,
                actor="demo",
            )
            created += result.created
    rt.dispatcher.wake()
    progress(f"notifications: {created} queued ({len(SAMPLES) - created} from an earlier run)")


async def wait_for_queue(rt: Runtime, org_ids: list[uuid.UUID], progress: Progress) -> None:
    """Wait (bounded) until the orgs' queues are worked off; a timeout is reported, not fatal."""

    async def drained() -> bool:
        async with rt.factory() as db:
            left = await db.scalar(
                select(func.count())
                .select_from(Notification)
                .where(Notification.org_id.in_(org_ids), Notification.status.not_in(DONE))
            )
        return not left

    progress("notifications: waiting for the dispatcher")
    if not await poll(drained, within=COMPLETE_TIMEOUT, interval=0.1):
        progress(f"notifications: some are still queued after {COMPLETE_TIMEOUT:g}s; moving on")


async def read_some(
    rt: Runtime, network: SimulatorNetwork, org_id: uuid.UUID, progress: Progress
) -> None:
    """The reader's phone opens the chat: its messages go to ``read``, the rest stay delivered."""
    async with rt.factory() as db:
        ids = list(
            await db.scalars(
                select(WhatsAppMessage.whatsapp_message_id).where(
                    WhatsAppMessage.org_id == org_id,
                    WhatsAppMessage.recipient_phone == READER,
                    WhatsAppMessage.whatsapp_message_id.is_not(None),
                    WhatsAppMessage.status.in_(("sent", "delivered")),
                )
            )
        )
    if not ids:
        return
    network.read(READER, [i for i in ids if i])

    async def all_read() -> bool:
        async with rt.factory() as db:
            left = await db.scalar(
                select(func.count())
                .select_from(WhatsAppMessage)
                .where(WhatsAppMessage.whatsapp_message_id.in_(ids))
                .where(WhatsAppMessage.status != "read")
            )
        return not left

    done = await poll(all_read, within=READ_TIMEOUT)
    progress(f"messages: {READER} read {len(ids)}" + ("" if done else " (receipts still coming)"))


async def _counts(
    rt: Runtime, model: type[Notification] | type[WhatsAppMessage], org_id: uuid.UUID
) -> dict[str, int]:
    async with rt.factory() as db:
        rows = await db.execute(
            select(model.status, func.count()).where(model.org_id == org_id).group_by(model.status)
        )
        return {status: int(count) for status, count in rows.all()}


def _safe_url(settings: Settings) -> str:
    """The database URL without its password, for progress lines."""
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)
