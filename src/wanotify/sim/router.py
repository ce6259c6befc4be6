"""``/sim/phones/{phone}/…``: what a person does with a simulated phone.

Mounted only when the transport is the simulator (a dev and test tool; it needs no token, as a
phone needs none). Numbers are accepted in any common form, like the rest of the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from wanotify.deps import SettingsDep
from wanotify.errors import InvalidInput, NotFound
from wanotify.phones import to_e164
from wanotify.transports.simulator import SimulatorNetwork

router = APIRouter(prefix="/sim", tags=["simulator"])


async def get_network(request: Request) -> SimulatorNetwork:
    network = getattr(request.app.state.runtime.transport, "network", None)
    if not isinstance(network, SimulatorNetwork):
        raise NotFound("the simulator is not the active transport")
    return network


NetworkDep = Annotated[SimulatorNetwork, Depends(get_network)]


class ScanIn(BaseModel):
    qr_code: str = Field(min_length=1, max_length=2000)


class PairIn(BaseModel):
    code: str = Field(min_length=8, max_length=9)


class ReadIn(BaseModel):
    message_ids: list[str] = Field(min_length=1, max_length=1000)


class ReplyIn(BaseModel):
    to: str = Field(max_length=40, description="The linked business number the reply goes to")
    text: str = Field(min_length=1, max_length=4096)


class OfflineIn(BaseModel):
    seconds: float | None = Field(default=None, gt=0, le=86400)


class FaultsIn(BaseModel):
    not_on_whatsapp: bool | None = Field(default=None, strict=True)
    drop_next: int | None = Field(default=None, ge=0, le=1000, strict=True)
    banned: bool | None = Field(default=None, strict=True)
    latency_seconds: float | None = Field(default=None, ge=0, le=60)
    temporary_ban_seconds: float | None = Field(
        default=None, ge=0, le=7 * 86400, description="Ban the sender for this long (0 lifts)"
    )


async def _phone(phone: str, settings: SettingsDep) -> str:
    return to_e164(phone, default_region=settings.default_region, lenient=True)


PhoneDep = Annotated[str, Depends(_phone)]


def _attempt(action: Any, *args: Any) -> Any:
    try:
        return action(*args)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


@router.post("/phones/{phone}/scan")
async def scan(phone: PhoneDep, body: ScanIn, network: NetworkDep) -> dict[str, Any]:
    """The phone scans a QR shown by a session: that session becomes linked to this number."""
    return dict(_attempt(network.scan, phone, body.qr_code))


@router.post("/phones/{phone}/pair")
async def pair(phone: PhoneDep, body: PairIn, network: NetworkDep) -> dict[str, Any]:
    """The phone's user types a pairing code (instead of scanning)."""
    return dict(_attempt(network.enter_pairing_code, phone, body.code))


@router.get("/phones/{phone}/inbox")
async def inbox(phone: PhoneDep, network: NetworkDep) -> list[dict[str, str]]:
    return network.inbox(phone)


@router.post("/phones/{phone}/read")
async def read(phone: PhoneDep, body: ReadIn, network: NetworkDep) -> dict[str, int]:
    return {"read": _attempt(network.read, phone, body.message_ids)}


@router.post("/phones/{phone}/reply")
async def reply(
    phone: PhoneDep, body: ReplyIn, network: NetworkDep, settings: SettingsDep
) -> dict[str, str]:
    to = to_e164(body.to, default_region=settings.default_region, field="to", lenient=True)
    return dict(_attempt(network.reply, phone, to, body.text))


@router.post("/phones/{phone}/unlink")
async def unlink(phone: PhoneDep, network: NetworkDep) -> dict[str, int]:
    return {"unlinked": _attempt(network.unlink, phone)}


@router.post("/phones/{phone}/offline")
async def offline(
    phone: PhoneDep, network: NetworkDep, body: OfflineIn | None = None
) -> dict[str, Any]:
    seconds = body.seconds if body else None
    _attempt(network.offline, phone, seconds)
    return {"offline": True, "seconds": seconds}


@router.post("/phones/{phone}/online")
async def online(phone: PhoneDep, network: NetworkDep) -> dict[str, bool]:
    _attempt(network.online, phone)
    return {"offline": False}


@router.post("/phones/{phone}/faults")
async def faults(phone: PhoneDep, body: FaultsIn, network: NetworkDep) -> dict[str, Any]:
    return dict(_attempt(lambda: network.set_faults(phone, **body.model_dump())))


@router.get("/phones/{phone}")
async def phone_state(phone: PhoneDep, network: NetworkDep) -> dict[str, Any]:
    return {
        "phone": phone,
        "devices": network.devices(phone),
        "faults": network.faults(phone),
        "offline": network.is_offline(phone),
    }
