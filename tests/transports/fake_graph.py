"""A local stand-in for Meta's Graph API (WhatsApp Cloud API), on a real port.

It answers as Meta's docs show: ``GET /{version}/{phone-number-id}`` gives the number's
``display_phone_number``; ``POST /{version}/{phone-number-id}/messages`` gives
``{"messaging_product", "contacts", "messages": [{"id": "wamid…"}]}``; failures come in the
documented envelope ``{"error": {"message", "type", "code", "error_data": {"details"},
"fbtrace_id"}}``. It also builds the webhook deliveries Meta would send (statuses, messages),
which tests sign with the app secret.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from tests.support import served

from wanotify.transports.cloud import sign

VERSION = "v21.0"
PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
ACCESS_TOKEN = "EAAGm0PX4ZCpsBAKZCfake" + "x" * 20
APP_SECRET = "a3f9c2e1b7d84f6a9e0c5d2b1f8e7a6c"
DISPLAY_PHONE = "+1 555-123-4567"
BUSINESS = "+15551234567"


def _digits(phone: str) -> str:
    return "".join(ch for ch in phone if ch.isdigit())


def _error(status: int, code: int, message: str, details: str, kind: str = "OAuthException") -> Any:
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": kind,
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details},
                "fbtrace_id": "A" + secrets.token_hex(10),
            }
        },
        status_code=status,
    )


@dataclass
class Sent:
    wamid: str
    to: str  # E.164
    body: dict[str, Any]

    @property
    def text(self) -> str:
        """What the phone shows: the text, or the template name and its parameters."""
        if self.body.get("type") == "text":
            return str(self.body["text"]["body"])
        template = self.body["template"]
        params = [
            p["text"] for c in template.get("components", []) for p in c.get("parameters", [])
        ]
        return f"template:{template['name']}:{template['language']['code']}:{'|'.join(params)}"


@dataclass
class FakeGraph:
    phone_number_id: str = PHONE_NUMBER_ID
    access_token: str = ACCESS_TOKEN
    app_secret: str = APP_SECRET
    sent: list[Sent] = field(default_factory=list)
    not_on_whatsapp: set[str] = field(default_factory=set)  # digits
    outside_window: set[str] = field(default_factory=set)  # digits: texts get 131047
    rate_limited: int = 0  # the next N sends get 130429
    # called with each accepted message before the answer leaves (a webhook that overtakes it)
    before_answer: Callable[[Sent], Awaitable[None]] | None = None
    url: str = ""
    _serving: AsyncExitStack | None = None

    # ---- what tests look at ----------------------------------------------------------------

    def received(self, phone: str) -> list[str]:
        return [m.text for m in self.sent if m.to == phone]

    def by_id(self, wamid: str) -> Sent:
        return next(m for m in self.sent if m.wamid == wamid)

    # ---- webhook deliveries as Meta sends them -----------------------------------------------

    def _envelope(self, value: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": WABA_ID,
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": _digits(BUSINESS),
                                    "phone_number_id": self.phone_number_id,
                                },
                                **value,
                            },
                        }
                    ],
                }
            ],
        }

    def status(
        self,
        wamid: str,
        status: str,
        *,
        error_code: int | None = None,
        callback_data: str | None = None,
    ) -> dict[str, Any]:
        sent = self.by_id(wamid)
        entry: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": _digits(sent.to),
        }
        opaque = callback_data or sent.body.get("biz_opaque_callback_data")
        if opaque:
            entry["biz_opaque_callback_data"] = opaque
        if status in ("sent", "delivered"):
            entry["conversation"] = {"id": secrets.token_hex(16), "origin": {"type": "service"}}
            entry["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "service"}
        if error_code is not None:
            entry["errors"] = [
                {
                    "code": error_code,
                    "title": "Message undeliverable",
                    "message": "Message undeliverable",
                    "error_data": {"details": "Message Undeliverable."},
                }
            ]
        return self._envelope({"statuses": [entry]})

    def message(self, from_phone: str, text: str) -> dict[str, Any]:
        return self._envelope(
            {
                "contacts": [{"profile": {"name": "Kerry"}, "wa_id": _digits(from_phone)}],
                "messages": [
                    {
                        "from": _digits(from_phone),
                        "id": "wamid." + secrets.token_hex(12),
                        "timestamp": str(int(time.time())),
                        "type": "text",
                        "text": {"body": text},
                    }
                ],
            }
        )

    def signed(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """The raw body and headers of a delivery, signed as Meta signs it."""
        body = json.dumps(payload).encode()
        return body, {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(body, self.app_secret),
        }

    # ---- the HTTP server ---------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.access_token}"

    def app(self) -> FastAPI:
        api = FastAPI()
        expired = (
            190,
            "Error validating access token: Session has expired.",
            "The access token is invalid or has expired",
        )

        @api.get("/{version}/{number_id}")
        async def phone_number(version: str, number_id: str, request: Request) -> Any:
            if not self._authorised(request):
                return _error(401, *expired)
            if number_id != self.phone_number_id:
                return _error(
                    400,
                    100,
                    f"Unsupported get request. Object with ID '{number_id}' does not exist",
                    "invalid phone number id",
                    "GraphMethodException",
                )
            return {
                "verified_name": "Acme Fleet",
                "display_phone_number": DISPLAY_PHONE,
                "quality_rating": "GREEN",
                "id": number_id,
            }

        @api.post("/{version}/{number_id}/messages")
        async def send(version: str, number_id: str, request: Request) -> Any:
            if not self._authorised(request):
                return _error(401, *expired)
            body = await request.json()
            to = _digits(str(body.get("to", "")))
            if self.rate_limited > 0:
                self.rate_limited -= 1
                return _error(400, 130429, "Rate limit hit", "Cloud API message throughput hit")
            if to in self.not_on_whatsapp:
                return _error(400, 131026, "Message undeliverable", "Message Undeliverable.")
            if body.get("type") == "text" and to in self.outside_window:
                return _error(
                    400,
                    131047,
                    "Re-engagement message",
                    "Message failed to send because more than 24 hours have passed since the "
                    "customer last replied to this number.",
                )
            wamid = "wamid.HBgL" + secrets.token_hex(16).upper()
            self.sent.append(Sent(wamid=wamid, to=f"+{to}", body=body))
            if self.before_answer is not None:
                await self.before_answer(self.sent[-1])
            answer: dict[str, Any] = {"id": wamid}
            if body.get("type") == "template":
                answer["message_status"] = "accepted"
            return {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body.get("to"), "wa_id": to}],
                "messages": [answer],
            }

        return api

    async def start(self) -> str:
        self._serving = AsyncExitStack()
        self.url = await self._serving.enter_async_context(served(self.app()))
        return self.url

    async def stop(self) -> None:
        """Shut the server down: the API becomes unreachable."""
        if self._serving is not None:
            await self._serving.aclose()
            self._serving = None
