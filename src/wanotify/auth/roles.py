"""Roles and their order: each role can do everything the ones below it can."""

from __future__ import annotations

from typing import Literal

Role = Literal["viewer", "member", "admin", "owner", "platform"]
RANK: dict[str, int] = {"viewer": 0, "member": 1, "admin": 2, "owner": 3, "platform": 4}


def at_least(role: str, needed: Role) -> bool:
    return RANK.get(role, -1) >= RANK[needed]
