"""One row per org table for a given org, inserted in plain SQL (as another system would), for
the row-level-security tests. Every table in ``db.rls.ORG_TABLES`` must have an entry here."""

from __future__ import annotations

import uuid
from typing import Any

# table → INSERT with $1 = a fresh id, $2 = the org id, $3 = a unique tag (text);
# organizations: $1 = its id, $2 = the tag
INSERTS: dict[str, str] = {
    "organizations": (
        "INSERT INTO organizations (id, name, plan, timezone, is_platform, created_at)"
        " VALUES ($1, 'Org ' || $2, 'basic', 'UTC', false, now())"
    ),
    "profiles": (
        "INSERT INTO profiles (id, org_id, email, role, password_hash, created_at)"
        " VALUES ($1, $2, $3 || '@example.test', 'owner', 'secret-hash', now())"
    ),
    "api_keys": (
        "INSERT INTO api_keys (id, org_id, name, prefix, hash, role, created_at)"
        " VALUES ($1, $2, 'ci', $3, 'key-hash', 'member', now())"
    ),
    "whatsapp_sessions": (
        "INSERT INTO whatsapp_sessions (id, org_id, status, enabled, qr_code, auth_state,"
        " created_at, updated_at)"
        " VALUES ($1, $2, 'connected', true, $3, '{\"creds\": \"secret\"}', now(), now())"
    ),
    "whatsapp_templates": (
        "INSERT INTO whatsapp_templates (id, org_id, name, category, message_template, variables,"
        " is_system, is_active, language, created_at, updated_at)"
        " VALUES ($1, $2, 'custom_' || $3, 'general', 'Hi', '[]', false, true,"
        " 'en', now(), now())"
    ),
    "whatsapp_messages": (
        "INSERT INTO whatsapp_messages (id, org_id, recipient_phone, message_type, message_body,"
        " status, created_at) VALUES ($1, $2, '+12025550143', 'text', 'Hi ' || $3, 'sent', now())"
    ),
    "notification_queue": (
        "INSERT INTO notification_queue (id, org_id, notification_type, recipient_phone,"
        " message_data, status, priority, attempts, max_attempts, next_attempt_at, created_at,"
        " updated_at) VALUES ($1, $2, 'custom_' || $3, '+12025550143', '{}', 'completed', 0, 0, 3,"
        " now(), now(), now())"
    ),
    "whatsapp_audit_logs": (
        "INSERT INTO whatsapp_audit_logs (id, org_id, actor, action, details, created_at)"
        " VALUES ($1, $2, 'system', 'test_' || $3, '{}', now())"
    ),
    "opt_outs": (
        "INSERT INTO opt_outs (org_id, phone, created_at)"
        " SELECT $2, '+1202555' || right($3, 4), now() WHERE $1::uuid IS NOT NULL"
    ),
    "session_commands": (
        "INSERT INTO session_commands (id, org_id, command, args, target_instance, status,"
        " created_at) VALUES ($1, $2, 'init', '{}', 'instance-' || $3, 'done', now())"
    ),
    "cloud_accounts": (
        "INSERT INTO cloud_accounts (id, org_id, phone_number_id, waba_id, secrets, created_at,"
        " updated_at) VALUES ($1, $2, 'pn' || $3, 'waba', '{}', now(), now())"
    ),
    "sending_policies": (
        "INSERT INTO sending_policies (org_id, min_gap_seconds, jitter_seconds, hourly_budget,"
        " daily_budget, warmup_enabled, warmup_first_day, per_recipient_hourly_cap,"
        " typing_enabled, critical_types, updated_at)"
        " SELECT $2, 4, 4, 200, 1000, true, 20, 10, true, '[]', now()"
        " WHERE $1::uuid IS NOT NULL AND $3::text IS NOT NULL"
    ),
    "webhook_endpoints": (
        "INSERT INTO webhook_endpoints (id, org_id, url, secret, events, enabled, created_at)"
        " VALUES ($1, $2, 'https://example.test/' || $3, '{}', '[]', true, now())"
    ),
    "webhook_deliveries": (
        "INSERT INTO webhook_deliveries (id, org_id, endpoint_id, event, payload, status,"
        " attempts, next_attempt_at, created_at)"
        " VALUES ($1, $2, (SELECT id FROM webhook_endpoints WHERE org_id = $2 LIMIT 1),"
        " 'test.' || $3, '{}', 'pending', 0, now(), now())"
    ),
}


def key_of(table: str) -> str:
    return "id" if table == "organizations" else "org_id"


def tag() -> str:
    return f"{uuid.uuid4().int % 10**8:08d}"


async def insert_org_rows(conn: Any, org_id: uuid.UUID, *, user_id: uuid.UUID) -> None:
    """An org with one row in every org table; its owner profile has id ``user_id``."""
    await conn.execute(INSERTS["organizations"], org_id, tag())
    await conn.execute(INSERTS["profiles"], user_id, org_id, tag())
    for table, sql in INSERTS.items():
        if table not in ("organizations", "profiles"):
            await conn.execute(sql, uuid.uuid4(), org_id, tag())
