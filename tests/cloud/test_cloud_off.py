"""Without transport=cloud there is nothing to save Cloud credentials for, and no webhook."""

from __future__ import annotations

import httpx
from tests.support import Org


async def test_cloud_credentials_are_refused_unless_the_transport_is_cloud(
    client: httpx.AsyncClient, org: Org
) -> None:
    body = {
        "phone_number_id": "106540352242922",
        "waba_id": "102290129340398",
        "access_token": "EAAG" + "x" * 30,
        "app_secret": "a" * 32,
    }
    response = await client.put("/api/sessions/cloud", json=body, headers=org.headers)
    assert response.status_code == 409
    assert "WANOTIFY_TRANSPORT=cloud" in response.json()["detail"]
    assert (await client.post("/webhooks/whatsapp-cloud", content=b"{}")).status_code == 404
