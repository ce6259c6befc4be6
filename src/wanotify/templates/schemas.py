"""Template bodies for the HTTP API.

Input models forbid unknown fields so a typo (``message_templat``) is a 422, not a silent no-op.
Only shapes are checked here; the template rules (names, placeholders vs variables, the allowed
template language) live in :mod:`wanotify.templates.service` so every caller gets them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wanotify.templates.service import LANGUAGE_PATTERN, NAME_PATTERN, Preview, TemplateView

Category = Literal["onboarding", "maintenance", "compliance", "trips", "billing", "general"]


class VariableIn(BaseModel):
    """One declared variable. ``required`` defaults to true: the safe reading."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, examples=["driver_name"])
    description: str | None = Field(default=None, max_length=500)
    example: str | None = Field(default=None, max_length=500, examples=["Amina"])
    required: bool = Field(default=True, strict=True)


class VariableOut(BaseModel):
    """A stored variable. Lenient: rows may have been written outside the API (Supabase)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    name: str
    description: str | None = None
    example: str | None = None
    required: bool = True


# Meta's template names: lowercase letters, digits and underscores ("" in a PATCH unmaps)
PROVIDER_TEMPLATE_PATTERN = r"^[a-z0-9_]*$"


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Lowercase slug; an org template named like a system one overrides it",
        examples=["trip_assigned"],
    )
    category: Category = "general"
    message_template: str = Field(
        min_length=1, examples=["Hi {{ driver_name }}, trip {{ trip_id }} is yours."]
    )
    variables: list[VariableIn] = Field(default_factory=list, max_length=50)
    is_active: bool = Field(default=True, strict=True)
    language: str = Field(default="en", max_length=16, pattern=LANGUAGE_PATTERN)
    provider_template_name: str | None = Field(
        default=None,
        max_length=512,
        pattern=PROVIDER_TEMPLATE_PATTERN,
        description="Cloud API: the Meta-approved template this one is sent as (with language)",
    )


class TemplatePatch(BaseModel):
    """Partial update: only the fields present change. ``null`` is refused rather than read as
    "leave unchanged", so a client never believes it cleared a field."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    category: Category | None = None
    message_template: str | None = Field(default=None, min_length=1)
    variables: list[VariableIn] | None = Field(default=None, max_length=50)
    is_active: bool | None = Field(default=None, strict=True)
    language: str | None = Field(default=None, max_length=16, pattern=LANGUAGE_PATTERN)
    provider_template_name: str | None = Field(
        default=None,
        max_length=512,
        pattern=PROVIDER_TEMPLATE_PATTERN,
        description='Cloud API: the Meta-approved template name; "" removes the mapping',
    )

    @model_validator(mode="after")
    def _no_nulls(self) -> TemplatePatch:
        nulls = sorted(f for f in self.model_fields_set if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"may not be null: {', '.join(nulls)} (leave a field out to keep it)")
        return self


class TemplateOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID | None
    name: str
    category: str
    message_template: str
    variables: list[VariableOut]
    is_system: bool
    is_active: bool
    language: str
    provider_template_name: str | None = None
    created_at: datetime
    updated_at: datetime
    placeholders: list[str] = Field(description="Variables the template reads, sorted")
    overrides_system: bool = Field(
        description="An org template with a system template's name, used instead of it"
    )

    @classmethod
    def from_view(cls, view: TemplateView) -> TemplateOut:
        t = view.template
        return cls(
            id=t.id,
            org_id=t.org_id,
            name=t.name,
            category=t.category,
            message_template=t.message_template,
            variables=[VariableOut.model_validate(v) for v in t.variables or []],
            is_system=t.is_system,
            is_active=t.is_active,
            language=t.language,
            provider_template_name=t.provider_template_name,
            created_at=t.created_at,
            updated_at=t.updated_at,
            placeholders=view.placeholders,
            overrides_system=view.overrides_system,
        )


class TemplateList(BaseModel):
    items: list[TemplateOut]


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variables: dict[str, Any] = Field(default_factory=dict)
    use_examples: bool = Field(
        default=False,
        strict=True,
        description="Fill variables not given from their declared examples",
    )


class PreviewOut(BaseModel):
    text: str
    length: int
    missing: list[str]
    unknown: list[str]

    @classmethod
    def from_preview(cls, preview: Preview) -> PreviewOut:
        return cls(
            text=preview.text,
            length=preview.length,
            missing=preview.missing,
            unknown=preview.unknown,
        )
