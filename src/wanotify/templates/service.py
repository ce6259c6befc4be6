"""Template rules: which template a name means for an org, and (CRUD) who may change what.

System templates (``org_id`` NULL) are shared by every org and read-only through the API; an org
changes one by creating its own template with the same name, which then overrides it for that org
only (see :func:`resolve`). Everything here is HTTP-free: functions raise domain errors and the app
renders them as problem+json.
"""

from __future__ import annotations

import keyword
import re
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Uuid, bindparam, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.clock import utcnow
from wanotify.db.audit import record
from wanotify.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from wanotify.templates import rendering
from wanotify.templates.models import CATEGORIES, WhatsAppTemplate

#: Template names are slugs: they are what callers pass as ``template`` when sending.
NAME_PATTERN = r"^[a-z][a-z0-9_]{1,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "a lowercase slug: a letter, then 1-63 lowercase letters, digits or underscores"

#: Variable names must be usable as a bare ``{{ name }}`` in a template.
_VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Words Jinja reads as constants or operators; a variable with one of these names could never be
# referenced from a template (Python's keywords cover and/or/not/in/is/if/else/True/...).
_JINJA_RESERVED = frozenset({"true", "false", "none"})

LANGUAGE_PATTERN = r"^[a-z]{2,3}(?:[_-][A-Za-z0-9]{2,8}){0,2}$"
_LANGUAGE_RE = re.compile(LANGUAGE_PATTERN)

READ_ONLY_DETAIL = (
    "system templates are read-only; create a template with the same name to override it"
)

# Queue statuses in which a notification will still be rendered from its template. A
# ``processing`` row may go back to ``pending`` (retry, or its lease expires), so it counts too.
_WAITING_STATUSES = ("pending", "processing")


@dataclass(frozen=True)
class TemplateView:
    """A template as an org sees it: the row plus whether it overrides a system template."""

    template: WhatsAppTemplate
    overrides_system: bool = False

    @property
    def placeholders(self) -> list[str]:
        return _placeholders(self.template.message_template)


@dataclass(frozen=True)
class Preview:
    """A rendered template. ``missing``/``unknown`` are always empty here: a request with either
    is refused (422) so nobody mistakes a half-filled preview for what will be sent."""

    text: str
    length: int
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


async def resolve(
    db: AsyncSession, *, org_id: uuid.UUID, ref: str | uuid.UUID, require_active: bool = True
) -> WhatsAppTemplate:
    """The template an org means by an id or a name.

    A name finds the org's own template first, then the system one (an org template with a
    system template's name overrides it). Another org's template is not found.
    """
    found = (await resolve_many(db, org_id=org_id, refs=[ref], require_active=require_active))[ref]
    if isinstance(found, DomainError):
        raise found
    return found


# Built once: constructing the expression cost more CPU than running it (enqueue profile).
_BY_ID_OR_NAME = select(WhatsAppTemplate).where(
    or_(
        WhatsAppTemplate.id.in_(bindparam("ids", expanding=True)),
        WhatsAppTemplate.name.in_(bindparam("names", expanding=True)),
    ),
    or_(
        WhatsAppTemplate.org_id.in_(bindparam("orgs", expanding=True)),
        WhatsAppTemplate.org_id.is_(None),
    ),
)

#: An org and a reference (template id or name) it sent.
OrgRef = tuple[uuid.UUID, str | uuid.UUID]


async def resolve_many(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    refs: Collection[str | uuid.UUID],
    require_active: bool = True,
) -> dict[str | uuid.UUID, WhatsAppTemplate | DomainError]:
    """``resolve`` of many references of one org in one query: each one's template, or the
    error that refusing it would raise (not found, inactive)."""
    found = await resolve_for_orgs(
        db, refs=[(org_id, ref) for ref in refs], require_active=require_active
    )
    return {ref: result for (_, ref), result in found.items()}


async def resolve_for_orgs(
    db: AsyncSession, *, refs: Collection[OrgRef], require_active: bool = True
) -> dict[OrgRef, WhatsAppTemplate | DomainError]:
    """``resolve`` of the references of several orgs (an enqueue group's) in one query. Each
    reference is matched here against its own org's rows and the system ones only, so a row of
    another org in the result can never stand for it."""
    ids = {ref: as_uuid(ref) for _, ref in refs}
    params = {
        "ids": [i for i in ids.values() if i is not None],
        "names": [str(ref) for ref, i in ids.items() if i is None],
        "orgs": list({org for org, _ in refs}),
    }
    rows = list(await db.scalars(_BY_ID_OR_NAME, params))
    found: dict[OrgRef, WhatsAppTemplate | DomainError] = {}
    for org_id, ref in refs:
        template_id = ids[ref]
        visible = (t for t in rows if t.org_id in (org_id, None))
        if template_id is not None:
            matches = [t for t in visible if t.id == template_id]
        else:  # the org's own first
            matches = sorted((t for t in visible if t.name == str(ref)), key=_system_last)
        if not matches:
            found[org_id, ref] = NotFound(f"template {ref!s} not found", field="template")
        elif require_active and not matches[0].is_active:
            found[org_id, ref] = InvalidInput(
                f"template {matches[0].name} is inactive and cannot be sent", field="template"
            )
        else:
            found[org_id, ref] = matches[0]
    return found


def _system_last(template: WhatsAppTemplate) -> bool:
    return template.org_id is None


def as_uuid(ref: str | uuid.UUID) -> uuid.UUID | None:
    """``ref`` as a template id, or None when it is a name."""
    if isinstance(ref, uuid.UUID):
        return ref
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None


# --- reading ---------------------------------------------------------------------------------


def _visible_to(org_id: uuid.UUID) -> Any:
    """System templates and the org's own: never another org's."""
    return or_(WhatsAppTemplate.org_id == org_id, WhatsAppTemplate.org_id.is_(None))


def _placeholders(source: str) -> list[str]:
    """Sorted placeholders for display. A row written outside the API (e.g. straight into
    Supabase) may not parse; listing must still work, so such a row shows none."""
    try:
        return sorted(rendering.placeholders(source))
    except InvalidInput:
        return []


async def _system_names(db: AsyncSession) -> set[str]:
    return set(
        await db.scalars(select(WhatsAppTemplate.name).where(WhatsAppTemplate.org_id.is_(None)))
    )


async def list_templates(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    category: str | None = None,
    is_active: bool | None = None,
    q: str | None = None,
    include_overridden: bool = False,
) -> list[TemplateView]:
    """System templates plus the org's own, sorted by name (the org's own first on a tie).

    A system template the org has overridden is hidden unless ``include_overridden``: sending by
    that name would use the org's template, so showing both by default would mislead. Whether a
    system template is overridden does not depend on the filters (an inactive override still
    wins in :func:`resolve`, it just cannot be sent).
    """
    query = select(WhatsAppTemplate).where(_visible_to(org_id))
    if category is not None:
        query = query.where(WhatsAppTemplate.category == category)
    if is_active is not None:
        query = query.where(WhatsAppTemplate.is_active.is_(is_active))
    if q:
        # autoescape: names contain "_", which LIKE would otherwise treat as a wildcard.
        query = query.where(WhatsAppTemplate.name.icontains(q.strip(), autoescape=True))
    rows = list(await db.scalars(query))
    own_names = set(
        await db.scalars(select(WhatsAppTemplate.name).where(WhatsAppTemplate.org_id == org_id))
    )
    system_names = await _system_names(db)
    views = [
        TemplateView(row, overrides_system=row.org_id is not None and row.name in system_names)
        for row in rows
        if include_overridden or row.org_id is not None or row.name not in own_names
    ]
    views.sort(key=lambda v: (v.template.name, v.template.org_id is None))
    return views


async def _get_row(
    db: AsyncSession, *, org_id: uuid.UUID, template_id: uuid.UUID
) -> WhatsAppTemplate:
    row: WhatsAppTemplate | None = await db.scalar(
        select(WhatsAppTemplate).where(WhatsAppTemplate.id == template_id, _visible_to(org_id))
    )
    if row is None:
        # Another org's template answers exactly like a missing one: ids must not leak.
        raise NotFound(f"template {template_id} not found")
    return row


async def _view(db: AsyncSession, row: WhatsAppTemplate) -> TemplateView:
    if row.org_id is None:
        return TemplateView(row)
    system = await db.scalar(
        select(WhatsAppTemplate.id).where(
            WhatsAppTemplate.org_id.is_(None), WhatsAppTemplate.name == row.name
        )
    )
    return TemplateView(row, overrides_system=system is not None)


async def get_template(
    db: AsyncSession, *, org_id: uuid.UUID, template_id: uuid.UUID
) -> TemplateView:
    """One system template or one of the org's own; anything else is 404."""
    return await _view(db, await _get_row(db, org_id=org_id, template_id=template_id))


# --- validation ------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise InvalidInput(f"name {name!r} is not valid: it must be {NAME_RULE}", field="name")


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise InvalidInput(
            f"category {category!r} is not valid; use one of: {', '.join(CATEGORIES)}",
            field="category",
        )


def _check_language(language: str) -> None:
    if not _LANGUAGE_RE.fullmatch(language):
        raise InvalidInput(
            f"language {language!r} is not a language code such as en, pt_BR or es-MX",
            field="language",
        )


def _normalise_variables(variables: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Variables as stored: always the four keys the seeds use, so readers need no defaults."""
    return [
        {
            "name": str(var["name"]),
            "description": var.get("description"),
            "example": var.get("example"),
            "required": bool(var.get("required", True)),
        }
        for var in variables
    ]


def _check_variable_names(variables: Sequence[Mapping[str, Any]]) -> None:
    names = [str(var["name"]) for var in variables]
    invalid = [
        n
        for n in names
        if not _VARIABLE_RE.fullmatch(n) or keyword.iskeyword(n) or n.lower() in _JINJA_RESERVED
    ]
    if invalid:
        raise InvalidInput(
            f"variable name(s) not valid: {', '.join(invalid)}; a name is a letter or _ followed "
            "by letters, digits or _ (at most 64), and not a reserved word",
            invalid=invalid,
        )
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise InvalidInput(
            f"variable(s) declared more than once: {', '.join(duplicates)}", duplicates=duplicates
        )


def _check_body(*, source: str, variables: Sequence[Mapping[str, Any]]) -> None:
    """A template and its declared variables must agree both ways: an undeclared placeholder
    would fail every send, and an unused declaration makes callers pass data that is dropped.
    Both lists are reported together so the author fixes them in one go."""
    rendering.validate_source(source)
    _check_variable_names(variables)
    undeclared: list[str] = []
    try:
        rendering.declared_matches_source(source=source, declared=variables)
    except InvalidInput as exc:
        undeclared = list(exc.extra.get("undeclared", []))
        if not undeclared:
            raise
    used = rendering.placeholders(source)
    unused = [str(v["name"]) for v in variables if str(v["name"]) not in used]
    problems = []
    if undeclared:
        problems.append(f"placeholder(s) not declared in variables: {', '.join(undeclared)}")
    if unused:
        problems.append(
            f"variable(s) declared but not used in message_template: {', '.join(unused)}"
        )
    if problems:
        raise InvalidInput("; ".join(problems), undeclared=undeclared, unused=unused)


async def _name_taken(
    db: AsyncSession, *, org_id: uuid.UUID, name: str, exclude: uuid.UUID | None = None
) -> bool:
    query = select(WhatsAppTemplate.id).where(
        WhatsAppTemplate.org_id == org_id, WhatsAppTemplate.name == name
    )
    if exclude is not None:
        query = query.where(WhatsAppTemplate.id != exclude)
    return await db.scalar(query) is not None


def _duplicate(name: str) -> Conflict:
    return Conflict(f"this organization already has a template named {name}", field="name")


async def _flush_unique(db: AsyncSession, *, org_id: uuid.UUID, name: str) -> None:
    """Flush, turning a lost race on UNIQUE(org_id, name) into the same 409 as the pre-check."""
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        if await _name_taken(db, org_id=org_id, name=name):
            raise _duplicate(name) from None
        raise


# --- writing ---------------------------------------------------------------------------------


async def create_template(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    actor: str,
    name: str,
    category: str,
    message_template: str,
    variables: Sequence[Mapping[str, Any]],
    is_active: bool = True,
    language: str = "en",
    provider_template_name: str | None = None,
) -> TemplateView:
    """Create an org template; commits. A system template's name is allowed: the new template
    overrides it for this org. Nothing is written unless every check passes."""
    _check_name(name)
    _check_category(category)
    _check_language(language)
    declared = _normalise_variables(variables)
    _check_body(source=message_template, variables=declared)
    if await _name_taken(db, org_id=org_id, name=name):
        raise _duplicate(name)
    now = utcnow()
    row = WhatsAppTemplate(
        org_id=org_id,
        name=name,
        category=category,
        message_template=message_template,
        variables=declared,
        is_system=False,
        is_active=is_active,
        language=language,
        provider_template_name=provider_template_name or None,
        created_at=now,
        updated_at=now,
    )
    db.add(row)
    await _flush_unique(db, org_id=org_id, name=name)
    view = await _view(db, row)
    await record(
        db,
        org_id=org_id,
        actor=actor,
        action="template.created",
        details={
            "template_id": str(row.id),
            "name": name,
            "overrides_system": view.overrides_system,
        },
    )
    await db.commit()
    return view


async def _own_row(
    db: AsyncSession, *, org_id: uuid.UUID, template_id: uuid.UUID
) -> WhatsAppTemplate:
    """A template the org may change: 404 if it cannot see it, 403 if it is a system one."""
    row = await _get_row(db, org_id=org_id, template_id=template_id)
    if row.org_id is None:
        raise Forbidden(READ_ONLY_DETAIL)
    return row


async def update_template(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    actor: str,
    template_id: uuid.UUID,
    name: str | None = None,
    category: str | None = None,
    message_template: str | None = None,
    variables: Sequence[Mapping[str, Any]] | None = None,
    is_active: bool | None = None,
    language: str | None = None,
    provider_template_name: str | None = None,
) -> TemplateView:
    """Change the given fields (``None`` = leave as is); commits.

    The resulting template is checked as a whole (a new body against the old variables, or the
    reverse), so an update cannot leave a template that fails every send. Only fields whose value
    really changes are written and audited; a no-op update writes nothing.
    """
    row = await _own_row(db, org_id=org_id, template_id=template_id)
    if name is not None:
        _check_name(name)
    if category is not None:
        _check_category(category)
    if language is not None:
        _check_language(language)
    new_variables = _normalise_variables(variables) if variables is not None else None
    if message_template is not None or new_variables is not None:
        _check_body(
            source=message_template if message_template is not None else row.message_template,
            variables=new_variables if new_variables is not None else row.variables,
        )
    if (
        name is not None
        and name != row.name
        and await _name_taken(db, org_id=org_id, name=name, exclude=row.id)
    ):
        raise _duplicate(name)

    wanted: dict[str, Any] = {
        "name": name,
        "category": category,
        "message_template": message_template,
        "variables": new_variables,
        "is_active": is_active,
        "language": language,
    }
    if provider_template_name is not None:  # "" unmaps: stored as NULL
        wanted["provider_template_name"] = provider_template_name or None
    changed = [
        key
        for key, value in wanted.items()
        if (value is not None or key == "provider_template_name") and getattr(row, key) != value
    ]
    if not changed:
        view = await _view(db, row)
        await db.commit()  # nothing to write; ends the transaction (SQLite holds its lock)
        return view
    old_name = row.name
    for key in changed:
        setattr(row, key, wanted[key])
    row.updated_at = utcnow()
    await _flush_unique(db, org_id=org_id, name=row.name)
    details: dict[str, Any] = {"template_id": str(row.id), "name": row.name, "changed": changed}
    if "name" in changed:
        details["old_name"] = old_name
    await record(db, org_id=org_id, actor=actor, action="template.updated", details=details)
    view = await _view(db, row)
    await db.commit()
    return view


async def _waiting_notifications(db: AsyncSession, template_id: uuid.UUID) -> int:
    """Queued notifications that will still be rendered from this template.

    A plain SQL query on purpose: ``notifications`` sits above ``templates`` (it imports this
    module), so importing its ``Notification`` model here would be a layering cycle. The bind
    parameter is typed ``Uuid`` so it is stored the same way as the column on each dialect
    (32 hex characters on SQLite, a native uuid on PostgreSQL).
    """
    query = text(
        "SELECT COUNT(*) FROM notification_queue "
        "WHERE template_id = :template_id AND status IN :statuses"
    ).bindparams(
        bindparam("template_id", value=template_id, type_=Uuid()),
        bindparam("statuses", value=list(_WAITING_STATUSES), expanding=True),
    )
    return int(await db.scalar(query) or 0)


async def delete_template(
    db: AsyncSession, *, org_id: uuid.UUID, actor: str, template_id: uuid.UUID
) -> None:
    """Delete an org template; commits.

    Refused while notifications waiting in the queue still need it: the foreign key would set
    their ``template_id`` to NULL and they could no longer be rendered. Sent messages keep their
    text (their ``template_id`` is set to NULL).
    """
    row = await _own_row(db, org_id=org_id, template_id=template_id)
    waiting = await _waiting_notifications(db, row.id)
    if waiting:
        raise Conflict(
            f"template {row.name} is used by {waiting} notification(s) waiting to be sent; "
            "cancel them or let them be sent first (or set is_active to false)",
            pending=waiting,
        )
    details = {"template_id": str(row.id), "name": row.name}
    await db.delete(row)
    await record(db, org_id=org_id, actor=actor, action="template.deleted", details=details)
    await db.commit()


# --- preview ---------------------------------------------------------------------------------


async def preview(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    template_id: uuid.UUID,
    variables: Mapping[str, object],
    use_examples: bool = False,
) -> Preview:
    """Render a template (system or own, active or not) exactly as a send would.

    With ``use_examples`` the declared examples fill whatever the caller did not give, so an
    author can see the layout before having real data. Missing or unknown variables are a 422
    naming them, the same check a send makes.
    """
    row = await _get_row(db, org_id=org_id, template_id=template_id)
    given: dict[str, object] = dict(variables)
    if use_examples:
        given = {**rendering.example_variables(row.variables), **given}
    rendering.check_variables(declared=row.variables, given=given)
    body = rendering.render(source=row.message_template, variables=given, declared=row.variables)
    return Preview(text=body, length=len(body))
