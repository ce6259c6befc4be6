"""system templates

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:00:00

Seeds the read-only system templates (org_id NULL) every org can send and may override with an
org template of the same name. Data lives here, not in app code, because a migration must keep
meaning what it meant when it was written; ids and timestamps are fixed so that every database
(SQLite, PostgreSQL, a hand-applied ``wanotify migrate --sql`` on Supabase) holds the same rows
and ``downgrade`` can remove exactly these.
"""

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:wanotify:system-templates")
SEEDED_AT = datetime(2026, 11, 25, tzinfo=UTC)


def _var(name: str, description: str, example: str, required: bool = True) -> dict[str, Any]:
    return {"name": name, "description": description, "example": example, "required": required}


SYSTEM_TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "trial_welcome",
        "category": "onboarding",
        "message_template": (
            "Hi {{ owner_name }}, welcome aboard! 🚚\n\n"
            "Your free trial for {{ org_name }} is now active: you have {{ trial_days }} days, "
            "until {{ trial_ends_on }}, to try everything.\n\n"
            "A good first step: add your vehicles and invite your drivers, then you will get "
            "maintenance, licence and trip alerts right here on WhatsApp.\n\n"
            "Questions? Just reply to this message.\n\n"
            "Reply STOP to opt out."
        ),
        "variables": [
            _var("owner_name", "First name of the new account owner", "Amina"),
            _var("org_name", "Name of the organization that started the trial", "Acme Haulage"),
            _var("trial_days", "Length of the trial in days", "14"),
            _var("trial_ends_on", "Last day of the trial", "9 Dec 2026"),
        ],
    },
    {
        "name": "maintenance_due",
        "category": "maintenance",
        "message_template": (
            "🔧 Maintenance due: {{ vehicle_name }} ({{ plate_number }})\n\n"
            "{{ service_type }} is due on {{ due_date }}"
            "{% if odometer_km %} (odometer: {{ odometer_km }} km){% endif %}.\n\n"
            "Please book it in to keep your fleet safe and on the road.\n\n"
            "Reply STOP to opt out."
        ),
        "variables": [
            _var("vehicle_name", "Vehicle name or fleet number", "Truck 07"),
            _var("plate_number", "Registration plate", "KDA 123X"),
            _var("service_type", "The service that is due", "Oil and filter change"),
            _var("due_date", "Date the service is due", "2 Dec 2026"),
            _var("odometer_km", "Current odometer reading in km, if known", "120,500", False),
        ],
    },
    {
        "name": "license_expiry",
        "category": "compliance",
        "message_template": (
            "⚠️ Licence expiry reminder\n\n"
            "{{ driver_name }}'s driving licence ({{ license_number }}) expires on "
            "{{ expiry_date }}, in {{ days_left }} days.\n\n"
            "Please renew it before then so the driver can stay on the schedule.\n\n"
            "Reply STOP to opt out."
        ),
        "variables": [
            _var("driver_name", "Full name of the driver", "John Mwangi"),
            _var("license_number", "Driving licence number", "DL-4471920"),
            _var("expiry_date", "Date the licence expires", "31 Dec 2026"),
            _var("days_left", "Days left until the licence expires", "30"),
        ],
    },
    {
        "name": "trip_assigned",
        "category": "trips",
        "message_template": (
            "Hi {{ driver_name }}, you have a new trip. 🗺️\n\n"
            "Trip: {{ trip_id }}\n"
            "From: {{ origin }}\n"
            "To: {{ destination }}\n"
            "Pickup: {{ pickup_time }}\n"
            "Vehicle: {{ vehicle_name }}\n\n"
            "Please check the vehicle before you set off. Safe driving!\n\n"
            "Reply STOP to opt out."
        ),
        "variables": [
            _var("driver_name", "First name of the driver", "John"),
            _var("trip_id", "Trip reference", "TRP-20931"),
            _var("origin", "Pickup location", "Mombasa depot"),
            _var("destination", "Drop-off location", "Nairobi warehouse"),
            _var("pickup_time", "Pickup date and time", "26 Nov 2026, 07:30"),
            _var("vehicle_name", "Vehicle assigned to the trip", "Truck 07 (KDA 123X)"),
        ],
    },
    {
        "name": "payment_due",
        "category": "billing",
        "message_template": (
            "Hello {{ org_name }},\n\n"
            "Invoice {{ invoice_number }} for {{ currency }} {{ amount }} is due on "
            "{{ due_date }}.\n\n"
            "Please pay by then to keep your fleet tracking running without interruption. "
            "If you have already paid, thank you, and please ignore this message.\n\n"
            "Reply STOP to opt out."
        ),
        "variables": [
            _var("org_name", "Name of the organization being billed", "Acme Haulage"),
            _var("amount", "Amount due", "49.00"),
            _var("currency", "Currency code", "USD"),
            _var("due_date", "Payment due date", "1 Dec 2026"),
            _var("invoice_number", "Invoice number", "INV-2026-0042"),
        ],
    },
]

for _seed in SYSTEM_TEMPLATES:
    _seed["id"] = uuid.uuid5(NAMESPACE, _seed["name"])


class _JSON(sa.types.TypeDecorator[Any]):
    """JSON (JSONB on PostgreSQL) that can also be written as a SQL literal.

    SQLAlchemy's JSON has no literal renderer, which ``wanotify migrate --sql`` (offline mode,
    every value inlined) needs; the JSON text as a string literal is what both databases take.
    """

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(sa.JSON())

    def literal_processor(self, dialect: Dialect) -> Callable[[Any], str]:
        quote = sa.Text().literal_processor(dialect)  # type: ignore[no-untyped-call]
        assert quote is not None
        return lambda value: quote(json.dumps(value))


# Only the columns written here: a migration must not depend on the app's current models.
templates = sa.table(
    "whatsapp_templates",
    sa.column("id", sa.Uuid()),
    sa.column("org_id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("category", sa.String()),
    sa.column("message_template", sa.Text()),
    sa.column("variables", _JSON()),
    sa.column("is_system", sa.Boolean()),
    sa.column("is_active", sa.Boolean()),
    sa.column("language", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    op.bulk_insert(
        templates,
        [
            {
                **seed,
                "org_id": None,
                "is_system": True,
                "is_active": True,
                "language": "en",
                "created_at": SEEDED_AT,
                "updated_at": SEEDED_AT,
            }
            for seed in SYSTEM_TEMPLATES
        ],
    )


def downgrade() -> None:
    op.execute(templates.delete().where(templates.c.id.in_([s["id"] for s in SYSTEM_TEMPLATES])))
