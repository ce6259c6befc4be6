"""SQL that opens wanotify's tables to a Supabase host app, read-only and one org at a time.

``wanotify migrate --sql --supabase`` prints the schema (every migration) followed by this. The
host React app reads through Supabase (PostgREST) with the user's JWT, as the ``authenticated``
role; it sees only its own org's rows: the org is that of the user's profile
(``profiles.id = auth.uid()``), found by ``wanotify_auth_org()``.

- ``wanotify_auth_org()`` is ``SECURITY DEFINER`` so the profiles policy does not recurse into
  itself. It runs as whoever created it: run the script as ``postgres`` (Supabase's SQL editor
  does), which bypasses RLS; under a role that does not, it finds no profile and shows nothing.
- Read-only: ``SELECT`` only, for ``authenticated``; ``anon`` gets nothing. Supabase grants both
  everything on new tables by default, so that is revoked first, on every wanotify table.
- Never readable: ``api_keys`` (key hashes), ``opt_outs``, ``session_commands`` (internal: the
  commands instances send each other) and the secret columns in ``SECRET_COLUMNS``:
  ``whatsapp_sessions.auth_state`` (the linked device's keys), ``profiles.password_hash``,
  ``webhook_endpoints.secret`` and ``cloud_accounts.secrets`` (sealed, but never handed out) and
  ``cloud_accounts.verify_token_hash``. Those tables are granted column by column, every column
  but the secret ones (so ``select=*`` is refused there; name columns). Columns added by later
  migrations are picked up when this script is run again.
- Admins only: ``webhook_endpoints`` and ``webhook_deliveries`` (event payloads) are readable by
  the org's ``admin``, ``owner`` (or ``platform``) profiles only (``wanotify_auth_role()``, also
  ``SECURITY DEFINER``), as through the API; other users of the org see no rows there.
- Writes (sending, templates) go through wanotify's API, which checks roles and audits.

Every statement re-runs cleanly (``CREATE OR REPLACE``, ``DROP POLICY IF EXISTS``).
"""

from __future__ import annotations

from collections.abc import Iterable

from wanotify.db.rls import ORG_TABLES, SHARED_ROWS

READER = "authenticated"
NO_ACCESS = ("anon", READER)
POLICY = "wanotify_supabase_read"
# table → the columns the host app must never read (the rest are granted column by column)
SECRET_COLUMNS: dict[str, tuple[str, ...]] = {
    "whatsapp_sessions": ("auth_state",),
    "profiles": ("password_hash",),
    "webhook_endpoints": ("secret",),
    "cloud_accounts": ("secrets", "verify_token_hash"),
}
# tables the host app cannot read at all
UNREADABLE = ("api_keys", "opt_outs", "session_commands")
# tables only the org's admins read (the API's GET /api/webhooks… needs the admin role too)
ADMINS_ONLY = ("webhook_endpoints", "webhook_deliveries")
ADMIN_ROLES = ("admin", "owner", "platform")

AUTH_ORG_FUNCTION = """
CREATE OR REPLACE FUNCTION wanotify_auth_org() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER AS $fn$
    SELECT p.org_id FROM profiles p WHERE p.id = auth.uid()
$fn$
"""

AUTH_ROLE_FUNCTION = """
CREATE OR REPLACE FUNCTION wanotify_auth_role() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER AS $fn$
    SELECT p.role FROM profiles p WHERE p.id = auth.uid()
$fn$
"""

PIN_SEARCH_PATH = """
DO $do$
BEGIN
    EXECUTE 'ALTER FUNCTION wanotify_auth_org() SET search_path = '
        || quote_ident(current_schema()) || ', pg_temp';
    EXECUTE 'ALTER FUNCTION wanotify_auth_role() SET search_path = '
        || quote_ident(current_schema()) || ', pg_temp';
END
$do$
"""


def _column_grant(table: str, secrets: tuple[str, ...]) -> str:
    hidden = ", ".join(f"'{column}'" for column in secrets)
    return f"""
DO $do$
DECLARE
    readable text;
BEGIN
    SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) INTO readable
      FROM information_schema.columns
     WHERE table_schema = current_schema() AND table_name = '{table}'
       AND column_name NOT IN ({hidden});
    EXECUTE 'GRANT SELECT (' || readable || ') ON {table} TO {READER}';
END
$do$
"""


def supabase_sql(tables: Iterable[str]) -> str:
    """The statements, each ending with ``;``, for appending to the schema script.

    ``tables``: every table wanotify has (the models'); none of them, nor ``alembic_version``,
    keeps Supabase's default grants to ``anon`` and ``authenticated``. (Not ``ALL TABLES IN
    SCHEMA``: the host app's own tables may live in the same schema.)"""
    statements = [
        "-- Supabase: the host app (role authenticated) reads its own org's rows, nothing else",
        "BEGIN",
        AUTH_ORG_FUNCTION.strip(),
        AUTH_ROLE_FUNCTION.strip(),
        PIN_SEARCH_PATH.strip(),
    ]
    for function in ("wanotify_auth_org()", "wanotify_auth_role()"):
        statements.append(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        statements.append(f"GRANT EXECUTE ON FUNCTION {function} TO {READER}")
    admins = ", ".join(f"'{role}'" for role in ADMIN_ROLES)
    for table in sorted({*tables, *ORG_TABLES, "alembic_version"}):
        statements.append(f"REVOKE ALL ON {table} FROM {', '.join(NO_ACCESS)}")
    for table, key in ORG_TABLES.items():
        statements.append(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        if table in UNREADABLE:
            continue
        if table in SECRET_COLUMNS:
            statements.append(_column_grant(table, SECRET_COLUMNS[table]).strip())
        else:
            statements.append(f"GRANT SELECT ON {table} TO {READER}")
        visible = f"{key} = wanotify_auth_org()"
        if table in SHARED_ROWS:
            visible += f" OR {key} IS NULL"
        if table in ADMINS_ONLY:
            visible = f"({visible}) AND wanotify_auth_role() IN ({admins})"
        statements.append(
            f"CREATE POLICY {POLICY} ON {table} FOR SELECT TO {READER} USING ({visible})"
        )
    statements.append("COMMIT")
    return "\n\n".join(s if s.startswith("--") else s + ";" for s in statements) + "\n"
