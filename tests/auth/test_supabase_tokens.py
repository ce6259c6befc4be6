"""Supabase Auth tokens: HS256 with the project secret, RS256/ES256 from a JWKS file or URL, and
every token that must be refused (key confusion, ``alg: none``, expired, wrong audience …)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from tests.support import Org, create_org

from wanotify.app import create_app
from wanotify.auth import jwks
from wanotify.runtime import Runtime
from wanotify.settings import Settings

PROBLEM = "application/problem+json"
SUPABASE_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
ISSUER = "https://abcdefghijklmnop.supabase.co/auth/v1"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if alg.startswith("RS") else ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def keyset(*keys: tuple[Any, str, str]) -> dict[str, Any]:
    return {"keys": [public_jwk(key, kid, alg) for key, kid, alg in keys]}


JWKS = keyset((RSA_KEY, "rsa-1", "RS256"), (EC_KEY, "ec-1", "ES256"))


def claims_for(user_id: uuid.UUID | str, **overrides: Any) -> dict[str, Any]:
    """What Supabase Auth puts in an access token, with ``overrides`` (None drops a claim)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "aud": "authenticated",
        "iss": ISSUER,
        "iat": now,
        "exp": now + 600,
        "role": "authenticated",
        "email": "someone@example.test",
        "aal": "aal1",
        "session_id": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def rs256(user_id: uuid.UUID | str, *, key: Any = RSA_KEY, kid: str = "rsa-1", **kw: Any) -> str:
    return jwt.encode(claims_for(user_id, **kw), key, algorithm="RS256", headers={"kid": kid})


def es256(user_id: uuid.UUID | str, **kw: Any) -> str:
    return jwt.encode(claims_for(user_id, **kw), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})


def hs256(user_id: uuid.UUID | str, *, secret: str = SUPABASE_SECRET, **kw: Any) -> str:
    return jwt.encode(claims_for(user_id, **kw), secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: HMAC with any bytes as the key, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})


def assert_refused(response: httpx.Response, fragment: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert fragment.lower() in response.json()["detail"].lower(), response.json()


@pytest.fixture(autouse=True)
def _fresh_jwks_cache() -> Iterator[None]:
    jwks.clear_cache()
    yield
    jwks.clear_cache()


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    return path


@pytest.fixture
async def app(settings: Settings, jwks_file: Path) -> AsyncIterator[FastAPI]:
    """The app with Supabase configured: project secret, issuer and a JWKS file."""
    settings.supabase_jwt_secret = SUPABASE_SECRET
    settings.supabase_issuer = ISSUER
    settings.supabase_jwks_file = str(jwks_file)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


# -- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [rs256, es256, hs256], ids=["RS256", "ES256", "HS256"])
async def test_supabase_token_resolves_to_the_profile(
    client: httpx.AsyncClient, org: Org, make: Any
) -> None:
    # Claims naming another org or role are ignored: the profile row decides.
    token = make(org.owner_id, org_id=str(uuid.uuid4()), app_role="platform")
    response = await me(client, token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["org_id"] == str(org.id)
    assert body["user_id"] == str(org.owner_id)
    assert body["role"] == "owner"


async def test_supabase_token_is_scoped_to_its_org(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    response = await client.get(
        "/api/templates", headers={"Authorization": f"Bearer {rs256(other_org.owner_id)}"}
    )
    assert response.status_code == 200, response.text
    created = await client.post(
        "/api/templates",
        headers=org.headers,
        json={"name": "acme_only", "category": "general", "message_template": "hi"},
    )
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]
    theirs = await client.get(
        f"/api/templates/{template_id}",
        headers={"Authorization": f"Bearer {rs256(other_org.owner_id)}"},
    )
    assert theirs.status_code == 404, theirs.text


async def test_built_in_tokens_still_work_beside_supabase(
    client: httpx.AsyncClient, org: Org
) -> None:
    response = await me(client, org.token)
    assert response.status_code == 200, response.text
    assert response.json()["org_id"] == str(org.id)


async def test_supabase_hs256_token_without_issuer_falls_through_to_the_project_secret(
    client: httpx.AsyncClient, org: Org, settings: Settings
) -> None:
    settings.supabase_issuer = ""
    response = await me(client, hs256(org.owner_id, iss=None))
    assert response.status_code == 200, response.text


# -- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [rs256, es256, hs256], ids=["RS256", "ES256", "HS256"])
async def test_user_without_a_profile_is_refused(
    client: httpx.AsyncClient, org: Org, make: Any
) -> None:
    assert_refused(await me(client, make(uuid.uuid4())), "no wanotify profile for this user")


@pytest.mark.parametrize("make", [rs256, es256, hs256], ids=["RS256", "ES256", "HS256"])
async def test_expired_token_is_refused(client: httpx.AsyncClient, org: Org, make: Any) -> None:
    past = int(time.time()) - 3600
    assert_refused(await me(client, make(org.owner_id, iat=past - 60, exp=past)), "expired")


@pytest.mark.parametrize("make", [rs256, es256, hs256], ids=["RS256", "ES256", "HS256"])
async def test_wrong_audience_is_refused(client: httpx.AsyncClient, org: Org, make: Any) -> None:
    assert_refused(await me(client, make(org.owner_id, aud="anon-other")), "audience")
    assert_refused(await me(client, make(org.owner_id, aud=None)), "aud")


@pytest.mark.parametrize("make", [rs256, hs256], ids=["RS256", "HS256"])
async def test_wrong_issuer_is_refused(client: httpx.AsyncClient, org: Org, make: Any) -> None:
    token = make(org.owner_id, iss="https://evil.supabase.co/auth/v1")
    response = await me(client, token)
    assert response.status_code == 401, response.text


async def test_key_confusion_hs256_signed_with_the_rsa_public_key_is_refused(
    client: httpx.AsyncClient, org: Org
) -> None:
    """The classic attack: alg switched to HS256, HMAC keyed with the (public) RSA key."""
    public = RSA_KEY.public_key()
    candidates = [
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(JWKS).encode(),
        json.dumps(JWKS["keys"][0]).encode(),
    ]
    for secret in candidates:
        for iss in (ISSUER, None, "wanotify"):
            token = hand_signed(
                {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
                claims_for(org.owner_id, iss=iss),
                secret,
            )
            response = await me(client, token)
            assert response.status_code == 401, (secret[:30], iss, response.text)


async def test_alg_none_is_refused(client: httpx.AsyncClient, org: Org) -> None:
    for alg in ("none", "None", "NONE"):
        token = hand_signed({"alg": alg, "typ": "JWT"}, claims_for(org.owner_id), None)
        assert_refused(await me(client, token), "not accepted")


async def test_other_algorithms_are_refused(client: httpx.AsyncClient, org: Org) -> None:
    token = jwt.encode(claims_for(org.owner_id), SUPABASE_SECRET * 2, algorithm="HS512")
    assert_refused(await me(client, token), "not accepted")
    token = jwt.encode(
        claims_for(org.owner_id), RSA_KEY, algorithm="PS256", headers={"kid": "rsa-1"}
    )
    assert_refused(await me(client, token), "not accepted")


async def test_asymmetric_tokens_need_the_right_key(client: httpx.AsyncClient, org: Org) -> None:
    # Signed by a key that is not in the JWKS, under a kid that is.
    assert_refused(await me(client, rs256(org.owner_id, key=OTHER_RSA_KEY)), "Signature")
    # A kid the JWKS does not have.
    assert_refused(await me(client, rs256(org.owner_id, kid="rsa-9")), "no signing key")
    # The EC key's kid on an RS256 token: the key is for ES256 only.
    assert_refused(await me(client, rs256(org.owner_id, kid="ec-1")), "is for ES256")


async def test_hs256_signed_with_another_secret_is_refused(
    client: httpx.AsyncClient, org: Org
) -> None:
    for iss in (ISSUER, None):
        token = hs256(org.owner_id, secret="x" * 40, iss=iss)
        assert_refused(await me(client, token), "Signature verification failed")


async def test_without_supabase_settings_supabase_tokens_are_refused(
    settings: Settings, jwks_file: Path
) -> None:
    application = create_app(settings)  # nothing Supabase configured
    async with application.router.lifespan_context(application):
        runtime: Runtime = application.state.runtime
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://wanotify.test") as c:
            acme = await create_org(runtime, c, name="Acme", email="owner@acme.test")
            assert_refused(await me(c, hs256(acme.owner_id)), "Signature")
            assert_refused(await me(c, rs256(acme.owner_id)), "not accepted")
            assert (await me(c, acme.token)).status_code == 200


# -- JWKS over HTTP ---------------------------------------------------------------------------


@dataclass
class JwksServer:
    url: str
    body: dict[str, Any]
    hits: list[float] = field(default_factory=list)


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    state = JwksServer(url="", body=JWKS)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(time.monotonic())
            data = json.dumps(state.body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/auth/v1/.well-known/jwks.json"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
async def url_client(
    settings: Settings, jwks_server: JwksServer
) -> AsyncIterator[tuple[httpx.AsyncClient, Org]]:
    settings.supabase_jwks_url = jwks_server.url
    settings.supabase_jwks_cache_seconds = 1
    settings.supabase_issuer = ISSUER
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://wanotify.test") as c:
            acme = await create_org(
                application.state.runtime, c, name="Acme", email="owner@acme.test"
            )
            yield c, acme


async def test_jwks_url_keys_are_fetched_and_cached(
    url_client: tuple[httpx.AsyncClient, Org], jwks_server: JwksServer, settings: Settings
) -> None:
    # the app's own settings: a lifespan the three requests cannot outlast on a loaded machine
    # (the fixture's 1 s is for the rotation test; CI once took 1.3 s between two requests)
    settings.supabase_jwks_cache_seconds = 300
    client, acme = url_client
    for make in (rs256, es256, rs256):
        response = await me(client, make(acme.owner_id))
        assert response.status_code == 200, response.text
        assert response.json()["org_id"] == str(acme.id)
    assert len(jwks_server.hits) == 1  # cached
    assert_refused(await me(client, rs256(uuid.uuid4())), "no wanotify profile for this user")
    assert_refused(await me(client, rs256(acme.owner_id, aud="x")), "audience")


async def test_jwks_url_rotation_is_picked_up_after_the_cache_lifespan(
    url_client: tuple[httpx.AsyncClient, Org], jwks_server: JwksServer
) -> None:
    client, acme = url_client
    assert (await me(client, rs256(acme.owner_id))).status_code == 200
    # The project rotates to a new key; the old one is gone.
    jwks_server.body = keyset((OTHER_RSA_KEY, "rsa-2", "RS256"))
    await asyncio.sleep(1.1)  # the cache lifespan (1 s in this test)
    new = rs256(acme.owner_id, key=OTHER_RSA_KEY, kid="rsa-2")
    response = await me(client, new)
    assert response.status_code == 200, response.text
    assert_refused(await me(client, rs256(acme.owner_id)), "no signing key")
    assert len(jwks_server.hits) >= 2


async def test_jwks_url_unreachable_is_503(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.supabase_jwks_url = f"http://127.0.0.1:{port}/jwks.json"
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://wanotify.test") as c:
            assert_refused(await me(c, rs256(uuid.uuid4())), "signing keys", status=503)
