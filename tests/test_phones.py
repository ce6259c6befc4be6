"""Phone numbers in any common form come out as E.164, and nothing else ever comes out."""

from __future__ import annotations

import re

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wanotify.errors import InvalidInput
from wanotify.phones import jid_for, to_e164

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-0123", "US", "+14155550123"),
        ("415.555.0123", "US", "+14155550123"),
        ("+1 415 555 0123", "GB", "+14155550123"),
        ("00 254 712 345678", "US", "+254712345678"),
        ("+254 712 345678", "US", "+254712345678"),
        ("0712 345678", "KE", "+254712345678"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("  +49 30 901820  ", "US", "+4930901820"),
        ("+61 2 9374 4000", "US", "+61293744000"),
        (
            "\uff11\uff12\uff10\uff12\uff15\uff15\uff15\uff10\uff11\uff18\uff17",
            "US",
            "+12025550187",
        ),  # full-width
    ],
)
def test_common_forms_normalise(raw: str, region: str, expected: str) -> None:
    assert to_e164(raw, default_region=region) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "hello", "+1", "+", "00", "12", "+999 123 456 789", "+1 555 000 1111", "1" * 41],
)
def test_not_numbers_are_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        to_e164(raw, field="recipient_phone")
    assert caught.value.detail.startswith("recipient_phone: ")
    assert caught.value.extra["field"] == "recipient_phone"


def test_national_number_needs_the_right_region() -> None:
    # A Kenyan mobile written nationally is not a US number.
    with pytest.raises(InvalidInput, match="region US"):
        to_e164("0712 345678", default_region="US")


def test_lenient_accepts_possible_but_unassigned_numbers() -> None:
    """Simulated phones use 555 numbers: possible, not valid."""
    with pytest.raises(InvalidInput):
        to_e164("+15550001111")
    assert to_e164("+15550001111", lenient=True) == "+15550001111"


def test_over_fifteen_digits_is_refused_even_if_the_metadata_allows_it() -> None:
    # phonenumbers calls this German number valid, but E.164 has at most 15 digits.
    with pytest.raises(InvalidInput, match=r"E\.164"):
        to_e164("20100000000000", default_region="DE")


def test_jid_for() -> None:
    assert jid_for("+14155550123") == "14155550123@s.whatsapp.net"


PHONEISH = st.lists(
    st.sampled_from(
        [
            *"0123456789+-(). x#*/",
            *["ext", "00", "+0"],
            # Arabic-Indic and full-width digits, a no-break space, control characters
            *["\u0660", "\u0661", "\uff12", "\u00a0", "\n", "\x00", "A"],
        ]
    ),
    max_size=30,
).map("".join)
REGIONS = st.sampled_from(["US", "GB", "KE", "DE", "IT", "IN", "BR", "ZZ", "", "us"])


@pytest.mark.proofs
@settings(max_examples=1500, deadline=None)
@given(raw=st.one_of(st.text(max_size=60), PHONEISH), region=REGIONS, lenient=st.booleans())
# Found by this test: trunk-prefix zeros only, which read as another number once written as E.164.
@example(raw="0/000000", region="DE", lenient=True)
@example(raw="0/00000", region="DE", lenient=True)
def test_any_text_gives_e164_or_invalid_input(raw: str, region: str, lenient: bool) -> None:
    try:
        result = to_e164(raw, default_region=region, lenient=lenient)
    except InvalidInput as exc:
        assert exc.detail.startswith("phone: ")
        return
    assert E164.match(result), (raw, result)
    # Normalising a normalised number changes nothing.
    assert to_e164(result, default_region=region, lenient=lenient) == result


# --- properties over real numbers and every region ------------------------------------------

NUMBER_TYPES = [
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE,
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    phonenumbers.PhoneNumberType.TOLL_FREE,
]
FORMATS = [
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.RFC3966,
]
ALL_REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


@pytest.mark.proofs
def test_every_way_of_writing_a_real_number_gives_its_e164() -> None:
    """Every region's example number of each type in the metadata (918 numbers), written as
    people and systems write it (the national form in its own region), comes out as the one
    E.164 of that number; so does "00" for "+", and blanks around it."""
    tried = 0
    for region in ALL_REGIONS:
        for kind in NUMBER_TYPES:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            expected = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            for style in FORMATS:
                written = phonenumbers.format_number(number, style)
                assert to_e164(written, default_region=region) == expected, (region, written)
                assert to_e164(f"  {written}\t", default_region=region) == expected
            assert to_e164("00" + expected[1:], default_region=region) == expected
            tried += 1
    assert tried > 900


@pytest.mark.proofs
@settings(max_examples=600, deadline=None)
@given(
    raw=st.one_of(st.text(max_size=40), PHONEISH),
    region=REGIONS,
    other_region=st.sampled_from(ALL_REGIONS),
    lenient=st.booleans(),
)
def test_an_accepted_number_is_a_fixed_point_everywhere(
    raw: str, region: str, other_region: str, lenient: bool
) -> None:
    """What comes out is a complete international number: read again in any region, leniently
    or not, with "00" instead of "+", it is itself; its WhatsApp id is its digits."""
    try:
        result = to_e164(raw, default_region=region, lenient=lenient)
    except InvalidInput:
        return
    assert to_e164(result, default_region=other_region, lenient=True) == result
    assert to_e164("00" + result[1:], default_region=other_region, lenient=lenient) == result
    if not lenient:
        assert to_e164(result, default_region=other_region) == result
    assert jid_for(result) == f"{result[1:]}@s.whatsapp.net"
    assert re.fullmatch(r"\d{7,15}", result[1:])


@pytest.mark.proofs
@given(raw=st.one_of(st.none(), st.integers(), st.binary(max_size=20), st.lists(st.text())))
def test_not_a_string_is_invalid_input(raw: object) -> None:
    """JSON can carry anything where a number should be; the answer is still our error."""
    with pytest.raises(InvalidInput):
        to_e164(raw)  # type: ignore[arg-type]
