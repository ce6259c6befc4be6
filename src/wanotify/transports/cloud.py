"""Meta's WhatsApp Business Cloud API (the official, hosted API) behind the transport Protocol.

There is no socket and no QR: an org "links" by saving its Cloud API credentials (phone number
id, WABA id, access token), which the service keeps encrypted in the session's auth state.
``connect`` checks them with one Graph call (``GET /{phone_number_id}``) and reports
``Connected``; ``send_text`` / ``send_template`` are HTTPS POSTs that return Meta's own message
id (``wamid.…``). Receipts and replies arrive on Meta's signed webhook: ``parse_webhook`` and
``signature_ok`` are the pure halves the HTTP layer uses, and ``CloudTransport.deliver_webhook``
turns a verified delivery into ``Receipt`` / ``Incoming`` events of the live connection.

Meta's error codes (the ``error.code`` of a failed call, or ``errors[].code`` of a ``failed``
status on the webhook) are mapped to the dispatcher's failure rules by ``error_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from wanotify.transports.base import (
    AuthStore,
    Connected,
    Disconnected,
    EventSink,
    Failed,
    Incoming,
    NotConnected,
    PermanentFailure,
    Receipt,
    RecipientNotOnWhatsApp,
    SendError,
    SessionRef,
    TemporaryFailure,
)

log = logging.getLogger(__name__)

# ---- Meta's error codes ----------------------------------------------------------------------

NOT_ON_WHATSAPP_CODES = frozenset({131026})  # message undeliverable (no WhatsApp, old app…)
RATE_LIMIT_CODES = frozenset({4, 80007, 130429, 131048, 131056})
OUTSIDE_WINDOW_CODES = frozenset({131047})  # re-engagement: > 24 h since the customer wrote
# The credentials or the account, not the message: the whole session is unusable.
ACCOUNT_CODES = frozenset({0, 10, 190, 200, 131031, 368})
TEMPORARY_CODES = frozenset({1, 2, 131000, 131016, 131049, 133004})

NO_CREDENTIALS = (
    "no WhatsApp Cloud API credentials are saved for this organization: an admin saves them "
    "with PUT /api/sessions/cloud"
)
OUTSIDE_WINDOW_FIX = (
    "the recipient has not written to this number in the last 24 hours, so WhatsApp only "
    "accepts an approved template: map this wanotify template to a Meta-approved one "
    "(provider_template_name) and send that instead"
)


class AccountFailure(PermanentFailure):
    """Meta refused the credentials or the account (expired token, blocked account)."""


def error_for(code: int | None, message: str, *, http_status: int | None = None) -> SendError:
    """The ``SendError`` for one of Meta's error codes (see the module docstring)."""
    text = f"WhatsApp Cloud API error {code}: {message}" if code is not None else message
    if code in NOT_ON_WHATSAPP_CODES:
        return RecipientNotOnWhatsApp(text)
    if code in RATE_LIMIT_CODES:
        return TemporaryFailure(f"rate limited by WhatsApp, will retry later ({text})")
    if code in OUTSIDE_WINDOW_CODES:
        return PermanentFailure(f"{OUTSIDE_WINDOW_FIX} ({text})")
    if code in ACCOUNT_CODES:
        return AccountFailure(
            f"Meta refused this account's credentials ({text}); save valid ones with "
            "PUT /api/sessions/cloud"
        )
    if code in TEMPORARY_CODES or (http_status is not None and http_status >= 500):
        return TemporaryFailure(text)
    return PermanentFailure(text)


def _error_from_response(response: httpx.Response) -> SendError:
    """Read Meta's error envelope ``{"error": {"message", "type", "code", "error_data"}}``."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    code = error.get("code")
    message = str(error.get("message") or response.reason_phrase or "request failed")
    details = (error.get("error_data") or {}).get("details")
    if details:
        message = f"{message}: {details}"
    return error_for(
        int(code) if isinstance(code, int | str) and str(code).isdigit() else None,
        message,
        http_status=response.status_code,
    )


# ---- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudCredentials:
    """What a connection needs; kept (encrypted by the service) as the session's auth state."""

    phone_number_id: str
    waba_id: str
    access_token: str

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": "cloud",
            "phone_number_id": self.phone_number_id,
            "waba_id": self.waba_id,
            "access_token": self.access_token,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> CloudCredentials | None:
        if not state or state.get("kind") != "cloud":
            return None
        return cls(
            phone_number_id=str(state["phone_number_id"]),
            waba_id=str(state.get("waba_id", "")),
            access_token=str(state["access_token"]),
        )


# ---- the webhook -----------------------------------------------------------------------------


def signature_ok(body: bytes, header: str | None, app_secret: str) -> bool:
    """Whether ``X-Hub-Signature-256`` is ``sha256=<HMAC-SHA256 of the raw body>`` under the app
    secret (constant-time compare)."""
    if not header or not header.startswith("sha256=") or not app_secret:
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256=").strip().lower())


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class StatusUpdate:
    """One entry of a webhook's ``statuses``: what happened to a message we sent."""

    phone_number_id: str
    message_id: str  # Meta's wamid
    status: str  # sent | delivered | read | failed
    at: datetime
    recipient: str  # E.164
    callback_data: str | None  # our id, echoed from biz_opaque_callback_data
    error: SendError | None  # for failed


@dataclass(frozen=True)
class InboundText:
    """One entry of a webhook's ``messages``: a customer wrote to the business number."""

    phone_number_id: str
    event: Incoming


WebhookItem = StatusUpdate | InboundText


def _when(timestamp: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(timestamp), UTC)
    except (TypeError, ValueError, OverflowError):
        return datetime.now(UTC)


def _e164(digits: Any) -> str:
    text = "".join(ch for ch in str(digits) if ch.isdigit())
    return f"+{text}"


def webhook_phone_number_ids(payload: Any) -> set[str]:
    """Every business phone number id a delivery speaks for (to find whose app secret signs it)."""
    return {item.phone_number_id for item in parse_webhook(payload)} | {
        str(value["metadata"]["phone_number_id"])
        for value in _values(payload)
        if isinstance(value.get("metadata"), dict) and "phone_number_id" in value["metadata"]
    }


def _values(payload: Any) -> Iterable[dict[str, Any]]:
    if not isinstance(payload, dict):
        return
    for entry in payload.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        for change in entry.get("changes") or []:
            if isinstance(change, dict) and isinstance(change.get("value"), dict):
                yield change["value"]


def parse_webhook(payload: Any) -> list[WebhookItem]:
    """Statuses and inbound texts of one webhook delivery, in the order Meta listed them.

    Other changes (template reviews, account updates) and non-text messages are skipped.
    """
    items: list[WebhookItem] = []
    for value in _values(payload):
        metadata = value.get("metadata") or {}
        number_id = str(metadata.get("phone_number_id", ""))
        for status in value.get("statuses") or []:
            if not isinstance(status, dict) or "id" not in status:
                continue
            error: SendError | None = None
            if status.get("status") == "failed":
                first = (status.get("errors") or [{}])[0]
                details = (first.get("error_data") or {}).get("details")
                message = str(first.get("message") or first.get("title") or "failed")
                code = first.get("code")
                error = error_for(
                    int(code) if isinstance(code, int) else None,
                    f"{message}: {details}" if details else message,
                )
            items.append(
                StatusUpdate(
                    phone_number_id=number_id,
                    message_id=str(status["id"]),
                    status=str(status.get("status", "")),
                    at=_when(status.get("timestamp")),
                    recipient=_e164(status.get("recipient_id", "")),
                    callback_data=status.get("biz_opaque_callback_data"),
                    error=error,
                )
            )
        for message in value.get("messages") or []:
            if not isinstance(message, dict) or message.get("type") != "text":
                continue
            body = (message.get("text") or {}).get("body", "")
            items.append(
                InboundText(
                    phone_number_id=number_id,
                    event=Incoming(
                        from_phone=_e164(message.get("from", "")),
                        text=str(body),
                        message_id=str(message.get("id", "")),
                        at=_when(message.get("timestamp")),
                    ),
                )
            )
    return items


# ---- transport and connection ----------------------------------------------------------------


class CloudTransport:
    """One HTTP client to the Graph API shared by every org's connection."""

    name = "cloud"

    def __init__(
        self,
        *,
        graph_url: str = "https://graph.facebook.com",
        api_version: str = "v21.0",
        timeout_seconds: float = 15.0,
    ) -> None:
        self.base_url = f"{graph_url.rstrip('/')}/{api_version.strip('/')}"
        self.timeout_seconds = timeout_seconds
        self._client: httpx.AsyncClient | None = None
        self._by_number: dict[str, CloudConnection] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_seconds)
        return self._client

    def open(self, session: SessionRef, *, auth: AuthStore, on_event: EventSink) -> CloudConnection:
        return CloudConnection(self, session, auth=auth, on_event=on_event)

    async def start(self) -> None:
        _ = self.client

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deliver_webhook(self, payload: Any) -> int:
        """Report a verified delivery's receipts and replies as events of the live connections
        of the numbers it names. Returns how many events were reported."""
        reported = 0
        for item in parse_webhook(payload):
            conn = self._by_number.get(item.phone_number_id)
            if conn is None:
                continue
            if isinstance(item, InboundText):
                await conn._emit(item.event)
            elif item.status == "delivered":
                await conn._emit(Receipt(item.message_id, "delivered", item.at))
            elif item.status == "read":
                await conn._emit(Receipt(item.message_id, "read", item.at))
            else:
                continue
            reported += 1
        return reported


class CloudConnection:
    """One org's Cloud API number (implements ``Connection``)."""

    def __init__(
        self,
        transport: CloudTransport,
        session: SessionRef,
        *,
        auth: AuthStore,
        on_event: EventSink,
    ) -> None:
        self.session = session
        self.auth = auth
        self._transport = transport
        self._on_event = on_event
        self._credentials: CloudCredentials | None = None
        self._task: asyncio.Task[None] | None = None

    async def _emit(self, event: Any) -> None:
        await self._on_event(event)

    # ---- Connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Check the saved credentials with Meta in the background; ``Connected`` when they work."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._verify(), name=f"cloud-{self.session.session_id}")

    async def _verify(self) -> None:
        credentials = CloudCredentials.from_state(await self.auth.load())
        if credentials is None:
            await self._emit(Failed(NO_CREDENTIALS))
            return
        try:
            response = await self._transport.client.get(
                f"/{credentials.phone_number_id}",
                params={"fields": "display_phone_number,verified_name"},
                headers=self._headers(credentials),
            )
        except httpx.HTTPError as exc:
            await self._emit(Disconnected(f"Graph API unreachable: {exc!r}", retry=True))
            return
        if response.status_code != 200:
            error = _error_from_response(response)
            if error.retryable:
                await self._emit(Disconnected(str(error), retry=True))
            else:
                await self._emit(Failed(str(error)))
            return
        body = response.json()
        self._credentials = credentials
        self._transport._by_number[credentials.phone_number_id] = self
        await self._emit(
            Connected(
                phone=_e164(body.get("display_phone_number", "")),
                whatsapp_id=credentials.phone_number_id,
            )
        )

    async def request_pairing_code(self, phone: str) -> str:
        raise RuntimeError(
            "the WhatsApp Cloud API links with credentials, not a pairing code: "
            "PUT /api/sessions/cloud"
        )

    async def send_text(self, *, to: str, text: str, message_id: str) -> str:
        """Send a free-form text (only inside the 24-hour customer window); returns Meta's wamid.

        Meta cannot deduplicate: ``message_id`` travels as ``biz_opaque_callback_data`` so the
        webhook can tie statuses to our row even before the wamid is stored.
        """
        return await self._post(
            to,
            message_id,
            {"type": "text", "text": {"body": text, "preview_url": False}},
        )

    async def send_template(
        self, *, to: str, name: str, language: str, parameters: list[str], message_id: str
    ) -> str:
        """Send a Meta-approved template (allowed outside the 24-hour window); body parameters in
        the template's declared order. Returns Meta's wamid."""
        template: dict[str, Any] = {"name": name, "language": {"code": language}}
        if parameters:
            template["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
            ]
        return await self._post(to, message_id, {"type": "template", "template": template})

    async def show_typing(self, *, to: str, seconds: float) -> None:
        """A no-op: the Cloud API shows "typing…" only in reply to a message of the customer's."""

    async def logout(self) -> None:
        """Forget the credentials (Meta keeps the number registered to the app)."""
        await self.close()
        await self.auth.clear()
        self._credentials = None

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        number = self._credentials.phone_number_id if self._credentials else None
        if number is not None and self._transport._by_number.get(number) is self:
            del self._transport._by_number[number]
        self._credentials = None

    # ---- HTTP ----------------------------------------------------------------------------------

    @staticmethod
    def _headers(credentials: CloudCredentials) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials.access_token}"}

    async def _post(self, to: str, message_id: str, content: dict[str, Any]) -> str:
        credentials = self._credentials
        if credentials is None:
            raise NotConnected("the Cloud API credentials are not verified yet")
        payload = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to.lstrip("+"),
            "biz_opaque_callback_data": message_id,
            **content,
        }
        try:
            response = await self._transport.client.post(
                f"/{credentials.phone_number_id}/messages",
                json=payload,
                headers=self._headers(credentials),
            )
        except httpx.HTTPError as exc:
            raise TemporaryFailure(f"Graph API unreachable: {exc!r}") from exc
        if response.status_code != 200:
            error = _error_from_response(response)
            if isinstance(error, AccountFailure):
                await self._emit(Failed(str(error)))
            raise error
        try:
            return str(response.json()["messages"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TemporaryFailure(f"unexpected Graph API answer: {response.text[:200]}") from exc
