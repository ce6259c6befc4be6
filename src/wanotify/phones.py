"""Phone numbers in, E.164 out: every recipient is normalised before anything is stored."""

from __future__ import annotations

import re
from collections.abc import Callable

import phonenumbers

from wanotify.errors import InvalidInput

#: What every stored number looks like: a plus, a country code, at most 15 digits in all.
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_RAW_LENGTH = 40


def to_e164(
    raw: str, *, default_region: str = "US", field: str = "phone", lenient: bool = False
) -> str:
    """Parse a number written in any common form and return it as E.164.

    Raises ``InvalidInput`` naming ``field`` for anything that is not a valid number.
    ``lenient`` accepts any number of a possible length (simulated phones, e.g. 555 numbers).
    """
    text = (raw or "").strip() if isinstance(raw, str) else ""
    if not text:
        raise InvalidInput(f"{field}: a phone number is required", field=field)
    if len(text) > MAX_RAW_LENGTH:
        raise InvalidInput(
            f"{field}: {raw[:MAX_RAW_LENGTH]!r}… is too long to be a phone number", field=field
        )
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        parsed = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        reason = str(getattr(exc, "_msg", "") or exc).rstrip(".")
        raise InvalidInput(
            f"{field}: {raw!r} is not a phone number ({reason})", field=field
        ) from exc
    check = phonenumbers.is_possible_number if lenient else phonenumbers.is_valid_number
    where = (
        "its country"
        if text.startswith("+")
        else f"region {default_region} (or write it with + and the country code)"
    )
    if not check(parsed):
        raise InvalidInput(f"{field}: {raw!r} is not a valid number for {where}", field=field)
    e164 = str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    # The metadata accepts a few numbers E.164 does not (over 15 digits, a national number
    # that is only a trunk prefix): nothing downstream (WhatsApp ids, the simulator) takes them.
    if not E164.match(e164):
        raise InvalidInput(
            f"{field}: {raw!r} is not a valid international number (E.164 allows 15 digits)",
            field=field,
        )
    if not _round_trips(e164, check):
        raise InvalidInput(f"{field}: {raw!r} is not a valid number for {where}", field=field)
    return e164


def _round_trips(e164: str, check: Callable[[phonenumbers.PhoneNumber], bool]) -> bool:
    """Whether ``e164`` read again is itself: a national number made only of trunk-prefix
    zeros (e.g. ``0/000000`` in DE) turns into a different number each time it is read."""
    try:
        again = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return False
    same = phonenumbers.format_number(again, phonenumbers.PhoneNumberFormat.E164) == e164
    return same and check(again)


def jid_for(e164: str) -> str:
    """The WhatsApp user id for a number (digits, no plus, at the user server)."""
    return f"{e164.lstrip('+')}@s.whatsapp.net"
