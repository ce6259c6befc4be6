"""``/sim/net/…``: the simulated network's side of remote sockets, for ``wanotify worker``
processes that share the serving process's network (``WANOTIFY_SIM_NETWORK_URL``; the protocol
is in ``wanotify.transports.simulator_remote``). Mounted with ``/sim``: simulator only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from wanotify.errors import NotFound
from wanotify.sim.router import NetworkDep
from wanotify.templates.rendering import MAX_CHARS
from wanotify.transports.base import SendError, SessionRef
from wanotify.transports.simulator import SimulatorConnection
from wanotify.transports.simulator_remote import NetworkHost

router = APIRouter(prefix="/sim/net", tags=["simulator"])


async def get_host(request: Request, network: NetworkDep) -> NetworkHost:
    host: NetworkHost | None = getattr(request.app.state, "sim_network_host", None)
    if host is None or host.network is not network:
        host = request.app.state.sim_network_host = NetworkHost(network)
    return host


HostDep = Annotated[NetworkHost, Depends(get_host)]


async def _hosted(conn: str, host: HostDep) -> SimulatorConnection:
    try:
        return host.get(conn)
    except KeyError:
        raise NotFound("no such connection (it was closed)") from None


ConnDep = Annotated[SimulatorConnection, Depends(_hosted)]


class ConnectIn(BaseModel):
    session_id: str = Field(max_length=100)
    org_id: str = Field(max_length=100)
    auth: dict[str, Any] | None = None
    client: str = Field(default="", max_length=200)


class SendIn(BaseModel):
    to: str = Field(max_length=40)
    # What the service sends is at most one WhatsApp text (a longer limit let a valid body,
    # JSON-escaped, exceed the request size limit: a 413 for data the schema allows).
    text: str = Field(max_length=MAX_CHARS)
    message_id: str = Field(max_length=200)


class PairingIn(BaseModel):
    phone: str = Field(max_length=40)


class TypingIn(BaseModel):
    to: str = Field(max_length=40)
    seconds: float = Field(ge=0, le=60)


@router.post("/connect")
async def connect(body: ConnectIn, host: HostDep) -> StreamingResponse:
    """A client's socket: JSON lines of its events for as long as the client reads."""
    session = SessionRef(session_id=body.session_id, org_id=body.org_id)
    stream = host.stream(session=session, auth=body.auth, client=body.client)
    return StreamingResponse(stream, media_type="application/x-ndjson")


@router.get("/connections")
async def connections(host: HostDep) -> list[dict[str, Any]]:
    return host.connections()


@router.post("/{conn}/send", response_model=None)
async def send(body: SendIn, connection: ConnDep) -> dict[str, str] | JSONResponse:
    try:
        sent = await connection.send_text(to=body.to, text=body.text, message_id=body.message_id)
    except SendError as exc:
        error = {"error": type(exc).__name__, "detail": str(exc)}
        return JSONResponse(error, status_code=409)
    return {"message_id": sent}


@router.post("/{conn}/pairing", response_model=None)
async def pairing(body: PairingIn, connection: ConnDep) -> dict[str, str] | JSONResponse:
    try:
        code = await connection.request_pairing_code(body.phone)
    except (ValueError, RuntimeError) as exc:
        return JSONResponse({"detail": str(exc)}, status_code=409)
    return {"code": code}


@router.post("/{conn}/typing")
async def typing(body: TypingIn, connection: ConnDep) -> dict[str, bool]:
    await connection.show_typing(to=body.to, seconds=body.seconds)
    return {"ok": True}


@router.post("/{conn}/logout")
async def logout(connection: ConnDep) -> dict[str, bool]:
    await connection.logout()
    return {"ok": True}


@router.post("/{conn}/close")
async def close(connection: ConnDep) -> dict[str, bool]:
    await connection.close()
    return {"ok": True}
