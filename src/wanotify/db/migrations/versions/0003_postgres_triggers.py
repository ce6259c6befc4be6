"""postgres triggers: trial welcome, LISTEN/NOTIFY wake-ups

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 13:00:00

PostgreSQL only (SQLite gets nothing; ``op.get_context().dialect`` also answers in offline mode,
so ``wanotify migrate --sql`` prints these statements):

- ``wanotify_trial_welcome``: AFTER INSERT on ``profiles``. When another system inserts the
  owner of a trial org (with a phone) by plain SQL, the ``trial_welcome`` notification is queued
  in the platform org's queue, exactly as ``orgs.service.enqueue_trial_welcome`` would queue it,
  with the same idempotency key ``trial_welcome:<org id>`` so the two never make two rows.
  It never makes the insert it rides on fail: anything that goes wrong is a WARNING.
- ``wanotify_queue_notify``: ``NOTIFY wanotify_queue`` when a queue row is inserted or updated
  into ``pending`` (the dispatchers LISTEN and claim at once). One notification per transaction
  (PostgreSQL folds identical ones), row-level with a WHEN clause so claims (→ processing) cost
  nothing and cannot wake every instance in a loop.
- ``wanotify_sessions_notify``: ``NOTIFY wanotify_sessions, '<org id>'`` when a session's status
  changes.

Every statement is one string without ``%`` or ``:name`` (offline rendering would mangle them).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIAL_WELCOME_FUNCTION = r"""
CREATE OR REPLACE FUNCTION wanotify_trial_welcome() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
-- Mirrors wanotify.orgs.service.enqueue_trial_welcome: same row, same idempotency key.
DECLARE
    new_org record;
    platform_id uuid;
    tpl record;
    phone text;
    days integer := 14;
    setting text;
    ends_on text;
    queued_id uuid;
BEGIN
    IF NEW.role IS DISTINCT FROM 'owner' OR coalesce(btrim(NEW.phone), '') = '' THEN
        RETURN NULL;
    END IF;
    SELECT o.name, o.plan, o.is_platform, o.created_at INTO new_org
      FROM organizations o WHERE o.id = NEW.org_id;
    IF NOT FOUND OR new_org.plan <> 'trial' OR new_org.is_platform THEN
        RETURN NULL;
    END IF;
    SELECT o.id INTO platform_id
      FROM organizations o WHERE o.is_platform ORDER BY o.created_at LIMIT 1;
    IF platform_id IS NULL THEN
        RETURN NULL;  -- no platform org: nobody to send it from
    END IF;
    -- Stored numbers are E.164; forgive the usual separators and a 00 prefix, skip the rest.
    phone := regexp_replace(NEW.phone, '[[:space:]().-]', '', 'g');
    IF left(phone, 2) = '00' THEN
        phone := '+' || substr(phone, 3);
    END IF;
    IF phone !~ '^[+][1-9][0-9]{6,14}$' THEN
        RAISE WARNING USING MESSAGE = 'wanotify: no trial welcome for org ' || NEW.org_id
            || ': phone ' || quote_literal(NEW.phone) || ' is not in E.164 form';
        RETURN NULL;
    END IF;
    -- As templates.resolve: the platform org's own trial_welcome overrides the system one.
    SELECT t.id, t.is_active INTO tpl
      FROM whatsapp_templates t
     WHERE t.name = 'trial_welcome' AND (t.org_id = platform_id OR t.org_id IS NULL)
     ORDER BY t.org_id NULLS LAST LIMIT 1;
    IF NOT FOUND OR NOT tpl.is_active THEN
        RAISE WARNING USING MESSAGE = 'wanotify: no trial welcome for org ' || NEW.org_id
            || ': template trial_welcome is missing or inactive';
        RETURN NULL;
    END IF;
    -- WANOTIFY_TRIAL_DAYS has no reach into the database: ALTER DATABASE ... SET
    -- wanotify.trial_days = '30' changes the trigger's trial length (default 14).
    setting := current_setting('wanotify.trial_days', true);
    IF setting ~ '^[0-9]{1,4}$' THEN
        days := setting::integer;
    END IF;
    ends_on := to_char((new_org.created_at AT TIME ZONE 'UTC')::date + days, 'FMDD Mon YYYY');
    BEGIN
        INSERT INTO notification_queue (
            id, org_id, notification_type, recipient_phone, template_id, message_data,
            status, priority, scheduled_for, attempts, max_attempts, next_attempt_at,
            idempotency_key, created_at, updated_at
        ) VALUES (
            gen_random_uuid(), platform_id, 'trial_welcome', phone, tpl.id,
            jsonb_build_object(
                'owner_name', coalesce(nullif(NEW.full_name, ''), NEW.email),
                'org_name', new_org.name,
                'trial_days', days::text,
                'trial_ends_on', ends_on
            ),
            'pending', 10, NULL, 0, 3, now(),
            'trial_welcome:' || NEW.org_id, now(), now()
        )
        ON CONFLICT (org_id, idempotency_key) DO NOTHING
        RETURNING id INTO queued_id;
        IF queued_id IS NOT NULL THEN
            INSERT INTO whatsapp_audit_logs (id, org_id, session_id, actor, action, details,
                                             created_at)
            VALUES (gen_random_uuid(), platform_id, NULL, 'system', 'notification.enqueued',
                    jsonb_build_object('notification_id', queued_id::text,
                                       'type', 'trial_welcome'),
                    now());
        END IF;
    EXCEPTION WHEN OTHERS THEN
        -- The insert that fired this (another system's sign-up) must not fail over a welcome.
        RAISE WARNING USING MESSAGE = 'wanotify: trial welcome not queued for org '
            || NEW.org_id || ': ' || SQLERRM;
    END;
    RETURN NULL;
END
$fn$
"""

# SECURITY DEFINER (so a sign-up system needs no rights on the queue) with a pinned
# search_path: the schema the tables were created in, then pg_temp last (never first).
PIN_SEARCH_PATH = """
DO $do$
BEGIN
    EXECUTE 'ALTER FUNCTION wanotify_trial_welcome() SET search_path = '
        || quote_ident(current_schema()) || ', pg_temp';
END
$do$
"""

TRIAL_WELCOME_TRIGGER = """
CREATE TRIGGER wanotify_trial_welcome
AFTER INSERT ON profiles
FOR EACH ROW WHEN (NEW.role = 'owner' AND NEW.phone IS NOT NULL)
EXECUTE FUNCTION wanotify_trial_welcome()
"""

QUEUE_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION wanotify_notify_queue() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('wanotify_queue', '');
    RETURN NULL;
END
$fn$
"""

QUEUE_NOTIFY_TRIGGER = """
CREATE TRIGGER wanotify_queue_notify
AFTER INSERT OR UPDATE OF status, next_attempt_at ON notification_queue
FOR EACH ROW WHEN (NEW.status = 'pending')
EXECUTE FUNCTION wanotify_notify_queue()
"""

SESSION_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION wanotify_notify_session() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('wanotify_sessions', NEW.org_id::text);
    RETURN NULL;
END
$fn$
"""

SESSION_NOTIFY_TRIGGER = """
CREATE TRIGGER wanotify_sessions_notify
AFTER UPDATE OF status ON whatsapp_sessions
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION wanotify_notify_session()
"""

UPGRADE = [
    TRIAL_WELCOME_FUNCTION,
    PIN_SEARCH_PATH,
    TRIAL_WELCOME_TRIGGER,
    QUEUE_NOTIFY_FUNCTION,
    QUEUE_NOTIFY_TRIGGER,
    SESSION_NOTIFY_FUNCTION,
    SESSION_NOTIFY_TRIGGER,
]

DOWNGRADE = [
    "DROP TRIGGER IF EXISTS wanotify_sessions_notify ON whatsapp_sessions",
    "DROP FUNCTION IF EXISTS wanotify_notify_session()",
    "DROP TRIGGER IF EXISTS wanotify_queue_notify ON notification_queue",
    "DROP FUNCTION IF EXISTS wanotify_notify_queue()",
    "DROP TRIGGER IF EXISTS wanotify_trial_welcome ON profiles",
    "DROP FUNCTION IF EXISTS wanotify_trial_welcome()",
]


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgresql():
        return
    for statement in UPGRADE:
        op.execute(statement.strip())


def downgrade() -> None:
    if not _postgresql():
        return
    for statement in DOWNGRADE:
        op.execute(statement)
