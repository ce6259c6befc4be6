"""Template rendering: what authors may write, what callers must pass, and that nothing in a
template or a variable value can run code."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wanotify.errors import InvalidInput
from wanotify.templates.rendering import (
    MAX_CHARS,
    check_variables,
    declared_matches_source,
    example_variables,
    placeholders,
    render,
    validate_source,
)

DECLARED: list[dict[str, Any]] = [
    {"name": "owner_name", "description": "Owner", "example": "Amina", "required": True},
    {"name": "org_name", "description": "Company", "example": "Acme Haulage", "required": True},
    {"name": "odometer_km", "description": "Odometer", "example": "120500", "required": False},
]


# --- rendering -------------------------------------------------------------------------------


def test_renders_both_placeholder_spellings() -> None:
    text = render(
        source="Hi {{owner_name}}, welcome to {{ org_name }}!",
        variables={"owner_name": "Amina", "org_name": "Acme"},
    )
    assert text == "Hi Amina, welcome to Acme!"


def test_no_html_escaping_and_text_kept_exactly() -> None:
    text = render(source="{{ a }} & <b>\n\n", variables={"a": "Tom & Jerry's <Ltd>"})
    assert text == "Tom & Jerry's <Ltd> & <b>\n\n"


def test_filters_and_if_are_allowed() -> None:
    source = (
        "{{ name | title }} / {{ plate | upper }} / {{ missing | default('n/a') }}"
        "{% if km %} at {{ km }} km{% else %} (no reading){% endif %}"
    )
    assert render(
        source=source, variables={"name": "ada lovelace", "plate": "ab12cd", "km": 0}
    ) == ("Ada Lovelace / AB12CD / n/a (no reading)")


def test_optional_declared_variable_renders_empty() -> None:
    source = "Hi {{ owner_name }}{% if odometer_km %} ({{ odometer_km }} km){% endif %}."
    given_vars = {"owner_name": "Amina", "org_name": "Acme"}
    assert render(source=source, variables=given_vars, declared=DECLARED) == "Hi Amina."
    assert render(source="[{{ odometer_km }}]", variables={}, declared=DECLARED) == "[]"


def test_none_renders_empty_not_the_word_none() -> None:
    assert render(source="a{{ x }}b", variables={"x": None}) == "ab"


def test_strict_undefined_names_every_missing_variable() -> None:
    with pytest.raises(InvalidInput) as err:
        render(source="{{ owner_name }} {{ org_name }} {{ trial_days }}", variables={"org_name": 1})
    assert err.value.detail == "missing variable(s): owner_name, trial_days"
    assert err.value.extra["missing"] == ["owner_name", "trial_days"]


def test_required_declared_variable_is_not_defaulted() -> None:
    with pytest.raises(InvalidInput, match="owner_name"):
        render(source="Hi {{ owner_name }}", variables={}, declared=DECLARED)


def test_undefined_attribute_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no attribute 'model'"):
        render(source="{{ vehicle.model }}", variables={"vehicle": {"name": "Truck 7"}})


def test_filter_on_wrong_kind_of_value_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="could not render"):
        render(source="{{ x | round }}", variables={"x": "abc"})


def test_rendered_length_limit() -> None:
    assert len(render(source="{{ x }}", variables={"x": "a" * MAX_CHARS})) == MAX_CHARS
    with pytest.raises(InvalidInput) as err:
        render(source="{{ x }}!", variables={"x": "a" * MAX_CHARS})
    assert err.value.detail == f"rendered text is {MAX_CHARS + 1} characters; WhatsApp allows 4096"


@given(st.text(max_size=MAX_CHARS - 3))
def test_values_are_data_never_template(value: str) -> None:
    """Whatever a value holds (braces, tags, HTML, newlines) comes out verbatim."""
    assert render(source="Hi {{name}}", variables={"name": value}) == "Hi " + value


@given(st.sampled_from(["{{ 7*7 }}", "{% include 'x' %}", "{{ ''.__class__ }}", "{#", "}}"]))
def test_template_syntax_inside_values_is_not_evaluated(value: str) -> None:
    assert render(source="{{ v }}", variables={"v": value}) == value


# --- the sandbox and the allowed language ----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("{{ ''.__class__ }}", "attribute '__class__'"),
        ("{{ x.__class__.__mro__ }}", "attribute '__mro__'"),
        ("{{ x._private }}", "attribute '_private'"),
        ("{{ x['__globals__'] }}", "item '__globals__'"),
        ("{% include 'secrets.txt' %}", "{% include %}"),
        ("{% import 'm' as m %}", "{% import %}"),
        ("{% from 'm' import f %}", "{% from … import %}"),
        ("{% extends 'base' %}", "{% extends %}"),
        ("{% macro m() %}x{% endmacro %}", "{% macro %}"),
        ("{% for v in vs %}{{ v }}{% endfor %}", "{% for %}"),
        ("{% set x = 1 %}", "{% set %}"),
        ("{{ name.upper() }}", "a function or method call"),
        ("{{ lipsum() }}", "a function or method call"),
        ("{{ 'x' * 1000000000 }}", "an arithmetic operator"),
        ("{{ '%0999999999d' % 1 }}", "an arithmetic operator"),
        ("{{ x | center(1000000000) }}", "filter 'center'"),
        ("{% if x is callable %}{% endif %}", "test 'callable'"),
    ],
)
def test_refused_at_validation(source: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_source(source)
    assert needle in err.value.detail
    assert err.value.detail.startswith("message_template line 1:")
    # render refuses the same source: it never runs an unchecked template
    with pytest.raises(InvalidInput):
        render(source=source, variables={"x": "a", "vs": [], "name": "n"})


def test_sandbox_refuses_dunder_reached_through_a_variable() -> None:
    """A key only known at render time slips past the tree check; the sandbox stops it."""
    with pytest.raises(InvalidInput) as err:
        render(source="{{ obj[key] }}", variables={"obj": "", "key": "__class__"})
    assert "unsafe" in err.value.detail


def test_a_method_read_without_a_call_is_refused() -> None:
    """Found by the fuzzing below: ``{{ name.upper }}`` printed "<built-in method upper of str
    object at 0x…>" into the message."""
    for source, value in (("{{ x.upper }}", "a"), ("{{ x.items ~ '' }}", {}), ("{{ x[k] }}", "a")):
        with pytest.raises(InvalidInput, match="unsafe"):
            render(source=source, variables={"x": value, "k": "upper"})
    assert render(source="{{ x['items'] }}", variables={"x": {"items": 3}}) == "3"


def test_globals_are_not_reachable() -> None:
    with pytest.raises(InvalidInput, match="missing variable"):
        render(source="{{ range }}{{ cycler }}", variables={})


def test_syntax_error_names_field_and_line() -> None:
    with pytest.raises(InvalidInput) as err:
        validate_source("Hello\n{{ owner_name }\nbye")
    assert err.value.detail.startswith("message_template has a syntax error on line 2:")
    assert err.value.extra["line"] == 2


def test_deep_nesting_is_invalid_input_not_a_crash() -> None:
    with pytest.raises(InvalidInput, match="nested too deeply"):
        validate_source("{{ " + "(" * 500 + "x" + ")" * 500 + " }}")


def test_source_length_limit() -> None:
    validate_source("a" * MAX_CHARS)
    with pytest.raises(InvalidInput) as err:
        validate_source("a" * (MAX_CHARS + 1))
    assert err.value.detail == "message_template is 4097 characters; WhatsApp allows 4096"


def test_valid_template_passes() -> None:
    validate_source("Hi {{ owner_name | title }}{% if org_name %} from {{ org_name }}{% endif %}")


# --- placeholders and declarations -----------------------------------------------------------


def test_placeholders() -> None:
    source = (
        "{{a}} {{ b | default(c) }} {% if d is defined %}{{ e.f }}{% elif g %}x{% endif %}"
        "{% raw %}{{ not_a_placeholder }}{% endraw %}"
    )
    assert placeholders(source) == {"a", "b", "c", "d", "e", "g"}
    assert placeholders("no placeholders") == set()


def test_declared_matches_source() -> None:
    declared_matches_source(source="Hi {{ owner_name }}", declared=DECLARED)
    with pytest.raises(InvalidInput) as err:
        declared_matches_source(source="{{ owner_name }} {{ zeta }} {{ alpha }}", declared=DECLARED)
    assert err.value.detail == "placeholder(s) not declared in variables: alpha, zeta"
    assert err.value.extra["undeclared"] == ["alpha", "zeta"]


def test_check_variables_ok_without_optional() -> None:
    check_variables(declared=DECLARED, given={"owner_name": "Amina", "org_name": "Acme"})


def test_check_variables_names_missing_and_unknown() -> None:
    with pytest.raises(InvalidInput) as err:
        check_variables(declared=DECLARED, given={"org_name": "Acme", "foo": 1, "bar": 2})
    assert (
        err.value.detail
        == "missing required variable(s): owner_name; unknown variable(s): bar, foo"
    )
    assert err.value.extra == {"missing": ["owner_name"], "unknown": ["bar", "foo"]}


def test_check_variables_blank_required_counts_as_missing() -> None:
    with pytest.raises(InvalidInput) as err:
        check_variables(declared=DECLARED, given={"owner_name": "  ", "org_name": None})
    assert err.value.detail == "missing required variable(s): owner_name, org_name"
    assert err.value.extra["unknown"] == []


def test_check_variables_without_required_key_means_required() -> None:
    with pytest.raises(InvalidInput, match="missing required variable"):
        check_variables(declared=[{"name": "x"}], given={})


def test_example_variables() -> None:
    assert example_variables(DECLARED) == {
        "owner_name": "Amina",
        "org_name": "Acme Haulage",
        "odometer_km": "120500",
    }
    assert example_variables([{"name": "n", "example": None}, {"name": "k", "example": 3}]) == {
        "n": "[n]",
        "k": "3",
    }


# --- fuzzing: any body, any values -----------------------------------------------------------

#: Pieces of Jinja and of the ways out of a sandbox, for bodies that reach the parser's corners.
PIECES = [
    *["{{", "}}", "{%", "%}", "{#", "#}", "{{-", "-}}", "{%-", "-%}", "\n", " ", "  "],
    *["x", "y", "v", "t", "k", "1", "0", "-1", "1.5", "1e308", "'a'", '"b"', "none", "true"],
    *[".", "[", "]", "(", ")", ",", ":", "|", "~", "=", "==", "<", "*", "**", "%", "+", "/"],
    *["upper", "default", "d", "truncate", "round", "int", "title", "trim", "center", "attr"],
    *["if", "elif", "else", "endif", "for", "in", "endfor", "set", "raw", "endraw", "with"],
    *["and", "or", "not", "is", "defined", "number", "callable", "sameas"],
    *["include", "import", "extends", "macro", "call", "block", "filter", "autoescape"],
    *["__class__", "__mro__", "__globals__", "__init__", "__subclasses__", "_private", "mro"],
    *["range", "lipsum", "cycler", "joiner", "namespace", "self", "loop", "caller", "config"],
    *["format", "join", "items", "keys", "pop", "append", "update"],
]


def _joined(*parts: st.SearchStrategy[str] | str) -> st.SearchStrategy[str]:
    return st.tuples(*(st.just(p) if isinstance(p, str) else p for p in parts)).map("".join)


ATOMS = st.sampled_from(["x", "y", "v", "k", "t", "'a'", "1", "none", "1.5", "'__class__'"])
FILTERS = st.sampled_from(
    ["upper", "default('z')", "d(x, true)", "truncate(3)", "round", "int", "title", "trim"]
)


def _allowed(e: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One step of the allowed language over the expressions ``e``."""
    return st.one_of(
        _joined(e, st.sampled_from([".y", "['y']", "[0]", "[k]"])),
        _joined(e, " | ", FILTERS),
        _joined(e, " ~ ", e),
        _joined("(", e, " if ", e, " else ", e, ")"),
        _joined(e, st.sampled_from([" == ", " < ", " and ", " or "]), e),
        _joined("not ", e),
        _joined(e, " is ", st.sampled_from(["defined", "none", "number"])),
    )


def _outside(e: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One step just outside it: calls, arithmetic, dunders, methods, refused filters/tests."""
    return st.one_of(
        _joined(e, st.sampled_from([".__class__", ".upper", "._x", ".mro", ".items"])),
        _joined(e, "()"),
        _joined(e, st.sampled_from([" * ", " % ", " + ", " ** "]), e),
        _joined(e, " | ", st.sampled_from(["center(3)", "attr('a')", "join", "format(1)"])),
        _joined(e, " is callable"),
    )


#: Expressions of the language, with now and then a step outside it.
EXPRESSIONS = st.recursive(
    ATOMS, lambda e: st.one_of(_allowed(e), _allowed(e), _allowed(e), _outside(e)), max_leaves=6
)
TEXT = st.text(st.characters(exclude_characters="{}%#"), max_size=12)
#: Expressions of the allowed language only: most of these get as far as rendering.
ALLOWED_EXPRESSIONS = st.recursive(ATOMS, _allowed, max_leaves=6)
OUTPUT = _joined("{{ ", EXPRESSIONS, " }}")
IF = _joined("{% if ", EXPRESSIONS, " %}", TEXT, "{% else %}", TEXT, "{% endif %}")
REFUSED_TAGS = st.one_of(
    _joined("{% for i in ", EXPRESSIONS, " %}{{ i }}{% endfor %}"),
    _joined("{% set q = ", EXPRESSIONS, " %}"),
)
STATEMENTS = st.one_of(TEXT, OUTPUT, IF)
BODIES = st.one_of(
    st.lists(_joined("{{ ", ALLOWED_EXPRESSIONS, " }}") | TEXT, max_size=4).map("".join),
    # Now and then one refused tag, so that most bodies get as far as rendering.
    _joined(st.lists(STATEMENTS, max_size=5).map("".join), st.just("") | REFUSED_TAGS),
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.text(max_size=120),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
#: Mostly every name a body reads is given (else most bodies stop at "missing variable").
VARIABLES = st.fixed_dictionaries(
    {"x": JSON_VALUES, "y": JSON_VALUES},
    optional={
        "v": JSON_VALUES,
        "k": st.sampled_from(["y", "__class__", "upper", "_x"]) | JSON_VALUES,
    },
)

#: What a Python object looks like when printed: never in a message unless the caller put it in.
PYTHON_REPR = re.compile(r"<(class|function|built-in|bound method|module|jinja2)|object at 0x")


class Trap:
    """A value on which everything reachable is another trap, and calling any of them is
    recorded: rendering must call none (``str`` is how a value is printed, not a call)."""

    def __init__(self, calls: list[str] | None = None) -> None:
        self.calls: list[str] = [] if calls is None else calls

    def __getattr__(self, name: str) -> Trap:
        return Trap(self.calls)

    def __getitem__(self, key: object) -> Trap:
        return Trap(self.calls)

    def __call__(self, *args: object, **kwargs: object) -> str:
        self.calls.append(f"called with {args} {kwargs}")
        return "called"

    def __str__(self) -> str:
        return "trap"


@pytest.mark.proofs
@settings(max_examples=800, deadline=None)
@given(source=BODIES, variables=VARIABLES)
# Found by this test: a constant expression that fails while Jinja folds it at compile time
# (UndefinedError: a 500 on saving the template), and a literal past Python's 4300 digits
# (ValueError from render() of a body longer than the API accepts, e.g. written by SQL).
@example(source="{{ 1" + "0" * 4400 + " }}", variables={"x": 1, "y": 1})
@example(source="{{ 'a'.y ~ x }}", variables={"x": 1, "y": 1})
def test_any_body_with_any_values_renders_or_is_invalid_input(
    source: str, variables: dict[str, Any]
) -> None:
    """Whatever an admin writes and a caller sends: text or our 422, never another exception,
    never more than WhatsApp takes, never a Python object's insides; a value that is a live
    object has none of its methods called (the language has no calls; the sandbox backs it)."""
    trap = Trap()
    try:
        placeholders(source)
        text = render(source=source, variables={**variables, "t": trap})
    except InvalidInput as exc:
        assert exc.detail
        return
    assert len(text) <= MAX_CHARS
    assert trap.calls == [], trap.calls
    given_text = source + repr(variables)
    for leaked in PYTHON_REPR.findall(text):
        assert leaked in given_text, (source, text)


@pytest.mark.proofs
@settings(max_examples=400, deadline=None)
@given(
    path=st.lists(
        st.sampled_from(
            [".__class__", "['__class__']", "[k]", ".__globals__", "[k][k]", ".mro", "|d(k)"]
        ),
        min_size=1,
        max_size=4,
    ).map("".join),
    base=st.sampled_from(["x", "t", "v", "''", "x.y"]),
    key=st.sampled_from(["__class__", "__init__", "__globals__", "_x", "mro", "upper"]),
)
def test_no_path_reaches_python_internals(path: str, base: str, key: str) -> None:
    """Dunder and private names, spelled out or carried in a variable, are refused (by the
    check before compiling, or by the sandbox at render time): the answer is our error or the
    plain value, never a class, a module or a function."""
    source = "{{ " + base + path + " }}"
    try:
        text = render(source=source, variables={"x": {"y": "s"}, "t": Trap(), "v": [], "k": key})
    except InvalidInput:
        return
    assert not PYTHON_REPR.search(text), (source, text)
