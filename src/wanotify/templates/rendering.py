"""Render ``whatsapp_templates.message_template`` safely.

Templates are written by org admins through the API and rendered by the dispatcher for every
notification, inside the one process that holds every org's WhatsApp sockets. So rendering must
not be able to run code, read anything but the variables it is given, or burn the process:

* Jinja2's immutable sandbox refuses ``__dunder__``/private attributes and mutating calls;
  ours also refuses reading a method (``{{ name.upper }}``): it could only print its repr.
* On top of it, a template may only use the small language a notification needs, checked on the
  parsed tree before compiling: ``{{ variable }}`` (also ``{{ a.b }}`` / ``{{ a['b'] }}``), the
  filters in ``ALLOWED_FILTERS``, ``{% if %}``/``{% elif %}``/``{% else %}`` with comparisons,
  ``and``/``or``/``not``, ``is defined``-style tests, inline ``x if c else y`` and ``~``
  concatenation. No loops, ``set``, macros, ``include``/``import``/``extends`` (there is no
  loader, and they would be the way to reach other code), no function or method calls and no
  arithmetic (``'x' * 10**9`` or ``'%0999999999d' % 1`` would exhaust memory in the sandbox).
* The environment has no globals (``range``, ``lipsum``, … are not reachable), and its filter and
  test tables hold only the allowed ones, so the tree check and the compiler agree.
* ``StrictUndefined``: a missing variable is an error naming it, never a silent blank.
* Autoescape is off: this is WhatsApp text, and ``&`` must stay ``&``. Variable values are data:
  braces inside a value are printed, never evaluated.

Variables declared ``required: false`` and not given render as ``""``; write
``{% if odometer_km %}…{% endif %}`` (or ``default('x', true)``) around them. ``None`` values
(JSON ``null``) render as ``""`` too, never as the word ``None``.

Every public function raises :class:`wanotify.errors.InvalidInput` (HTTP 422) with a detail a
template author can act on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from wanotify.errors import InvalidInput

#: WhatsApp's limit for a text message body, in characters.
MAX_CHARS = 4096

ALLOWED_FILTERS = frozenset(
    {"default", "d", "upper", "lower", "title", "capitalize", "trim", "truncate", "round", "int"}
)
ALLOWED_TESTS = frozenset(
    {"defined", "undefined", "none", "number", "string", "eq", "ne", "lt", "le", "gt", "ge"}
)

# Node types that are safe by themselves; Filter, Test, Getattr and Getitem get a closer look.
_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.If,
    nodes.Name,
    nodes.Const,
    nodes.List,
    nodes.Tuple,
    nodes.Keyword,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.CondExpr,
    nodes.Concat,
    nodes.Slice,
    nodes.Filter,
    nodes.Test,
    nodes.Getattr,
    nodes.Getitem,
)

# What to call a refused node in an error message: the tag the author wrote.
_REFUSED_NAMES: dict[type[nodes.Node], str] = {
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from … import %}",
    nodes.Extends: "{% extends %}",
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.Block: "{% block %}",
    nodes.For: "{% for %}",
    nodes.Assign: "{% set %}",
    nodes.AssignBlock: "{% set %}",
    nodes.With: "{% with %}",
    nodes.FilterBlock: "{% filter %}",
    nodes.ScopedEvalContextModifier: "{% autoescape %}",
    nodes.Call: "a function or method call",
    nodes.BinExpr: "an arithmetic operator",
    nodes.UnaryExpr: "an arithmetic operator",
    nodes.Dict: "a dict literal",
}

_ALLOWED_SUMMARY = "{{ variable }}, simple filters and {% if %}"


def _blank_none(value: Any) -> Any:
    """JSON ``null`` in message_data prints as nothing rather than ``None``."""
    return "" if value is None else value


class _TextSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, also refusing attributes that are methods: a template cannot
    call them, so reading one (``{{ name.upper }}``, ``{{ vehicle['items'] }}`` on a dict) could
    only print a Python object, its memory address included, into a customer's message."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return super().is_safe_attribute(obj, attr, value) and not callable(value)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _TextSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,  # the message is exactly what the author typed
        finalize=_blank_none,
    )
    env.globals.clear()
    env.filters = {name: env.filters[name] for name in ALLOWED_FILTERS}
    env.tests = {name: env.tests[name] for name in ALLOWED_TESTS}
    return env


_ENV = _environment()


@dataclass(frozen=True)
class _Compiled:
    template: Template
    names: frozenset[str]


def _refuse(
    node: nodes.Node, what: str, hint: str = f"templates may only use {_ALLOWED_SUMMARY}"
) -> InvalidInput:
    return InvalidInput(
        f"message_template line {node.lineno}: {what} is not allowed; {hint}", line=node.lineno
    )


def _check_tree(node: nodes.Node) -> None:
    """Refuse anything outside the small template language described in the module doc."""
    if not isinstance(node, _ALLOWED_NODES):
        kind = next(
            (label for cls, label in _REFUSED_NAMES.items() if isinstance(node, cls)),
            f"'{type(node).__name__}'",
        )
        raise _refuse(node, kind)
    if isinstance(node, nodes.Filter) and node.name not in ALLOWED_FILTERS:
        raise _refuse(
            node, f"filter '{node.name}'", f"allowed filters: {', '.join(sorted(ALLOWED_FILTERS))}"
        )
    if isinstance(node, nodes.Test) and node.name not in ALLOWED_TESTS:
        raise _refuse(
            node, f"test '{node.name}'", f"allowed tests: {', '.join(sorted(ALLOWED_TESTS))}"
        )
    # Caught here for a clear message; the sandbox would refuse them at render time anyway.
    if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        raise _refuse(node, f"attribute '{node.attr}'")
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
        and node.arg.value.startswith("_")
    ):
        raise _refuse(node, f"item '{node.arg.value}'")
    for child in node.iter_child_nodes():
        _check_tree(child)


@lru_cache(maxsize=1024)
def _compile(source: str) -> _Compiled:
    """Parse, check and compile once per distinct source: the dispatcher renders the same few
    templates over and over. Errors are not cached (lru_cache does not cache exceptions)."""
    try:
        tree = _ENV.parse(source)
        _check_tree(tree)
        names = frozenset(meta.find_undeclared_variables(tree))
        template = _ENV.from_string(tree)
    except TemplateSyntaxError as exc:  # also TemplateAssertionError from the compiler
        raise InvalidInput(
            f"message_template has a syntax error on line {exc.lineno}: {exc.message}",
            line=exc.lineno,
        ) from None
    except RecursionError:  # Jinja's parser recurses about a dozen frames per parenthesis
        raise InvalidInput("message_template is nested too deeply") from None
    except TemplateError as exc:
        # Jinja folds constant expressions while compiling: ``{{ 'a'.y ~ x }}`` fails there
        # (an undefined attribute of a constant), before any variable is known.
        raise InvalidInput(f"message_template: {exc.message}") from None
    except ValueError as exc:  # the lexer's int() of a literal over Python's 4300 digits
        raise InvalidInput(f"message_template has a literal that cannot be read: {exc}") from None
    return _Compiled(template=template, names=names)


def _names(declared: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(var["name"]) for var in declared]


def _is_required(var: Mapping[str, Any]) -> bool:
    """A declaration without ``required`` counts as required: the safe reading."""
    return bool(var.get("required", True))


def placeholders(source: str) -> set[str]:
    """The variable names a template reads (its undeclared variables in Jinja's terms)."""
    return set(_compile(source).names)


def validate_source(source: str) -> None:
    """Accept a template body for saving: WhatsApp's length limit, valid syntax, and only the
    allowed template language."""
    if len(source) > MAX_CHARS:
        raise InvalidInput(
            f"message_template is {len(source)} characters; WhatsApp allows {MAX_CHARS}",
            length=len(source),
        )
    _compile(source)


def declared_matches_source(*, source: str, declared: Sequence[Mapping[str, Any]]) -> None:
    """Every placeholder must be declared, so callers and previews know what to pass.

    Declared-but-unused variables are allowed (a template may be edited to drop one)."""
    undeclared = sorted(placeholders(source) - set(_names(declared)))
    if undeclared:
        raise InvalidInput(
            f"placeholder(s) not declared in variables: {', '.join(undeclared)}",
            undeclared=undeclared,
        )


def check_variables(*, declared: Sequence[Mapping[str, Any]], given: Mapping[str, object]) -> None:
    """Check a send/preview request against the template's declared variables, naming every
    problem at once so the caller fixes them in one round trip.

    A required variable counts as missing when absent, ``None`` or blank: sending "Hi ," to a
    customer is worse than refusing."""
    names = _names(declared)
    missing = [
        str(var["name"])
        for var in declared
        if _is_required(var) and _is_blank(given.get(str(var["name"])))
    ]
    unknown = sorted(set(given) - set(names))
    problems = []
    if missing:
        problems.append(f"missing required variable(s): {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown variable(s): {', '.join(unknown)}")
    if problems:
        raise InvalidInput("; ".join(problems), missing=missing, unknown=unknown)


def _is_blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def render(
    *,
    source: str,
    variables: Mapping[str, object],
    declared: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render a template to WhatsApp text.

    With ``declared``, optional variables that are not given render as ``""``. Does not check
    for unknown variables: call :func:`check_variables` first where that matters (the API)."""
    compiled = _compile(source)
    context: dict[str, object] = {
        str(var["name"]): "" for var in declared or () if not _is_required(var)
    }
    context.update(variables)
    try:
        text = compiled.template.render(context)
    except UndefinedError as exc:
        absent = sorted(compiled.names - context.keys())
        if absent:
            raise InvalidInput(
                f"missing variable(s): {', '.join(absent)}", missing=absent
            ) from None
        raise InvalidInput(f"message_template: {exc.message}") from None
    except SecurityError as exc:
        raise InvalidInput(f"message_template is not allowed to do that: {exc.message}") from None
    except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        # A filter given the wrong kind of value, e.g. round('abc'): the caller's data.
        raise InvalidInput(f"could not render message_template: {exc}") from None
    if len(text) > MAX_CHARS:
        raise InvalidInput(
            f"rendered text is {len(text)} characters; WhatsApp allows {MAX_CHARS}",
            length=len(text),
        )
    return text


def example_variables(declared: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each declared variable's example, for previews. A variable without an example shows as
    ``[name]`` so the preview still shows where it goes."""
    return {
        str(var["name"]): (
            f"[{var['name']}]" if var.get("example") in (None, "") else str(var["example"])
        )
        for var in declared
    }
