"""Built-in login and bearer JWTs: what is issued, and every token that must be refused."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import delete
from tests.support import PASSWORD, Org, add_user, login

from wanotify.auth import service as auth
from wanotify.auth.models import Profile
from wanotify.errors import Conflict, InvalidInput
from wanotify.runtime import Runtime

PROBLEM = "application/problem+json"


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = dict(response.json())
    assert body["status"] == status
    assert body["detail"]
    return body


def forged(runtime: Runtime, org: Org, **overrides: Any) -> dict[str, Any]:
    """Claims like the ones login issues for ``org``'s owner, with ``overrides``."""
    settings = runtime.settings
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(org.owner_id),
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + 600,
        "role": "authenticated",
        "org_id": str(org.id),
        "app_role": "owner",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})


async def test_login_issues_a_supabase_shaped_jwt(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    response = await client.post(
        "/api/auth/login", json={"email": "Owner@Acme.test ", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == runtime.settings.jwt_ttl_seconds
    claims = claims_of(body["access_token"])
    assert claims["sub"] == str(org.owner_id)
    assert claims["aud"] == "authenticated"
    assert claims["role"] == "authenticated"
    assert claims["org_id"] == str(org.id)
    assert claims["app_role"] == "owner"
    assert claims["exp"] - time.time() == pytest.approx(body["expires_in"], abs=30)
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"


async def test_me_describes_the_caller(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    response = await me(client, org.token)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "org_id": str(org.id),
        "role": "owner",
        "user_id": str(org.owner_id),
        "email": "owner@acme.test",
    }
    viewer = await add_user(runtime, client, org, email="viewer@acme.test", role="viewer")
    response = await client.get("/api/auth/me", headers=viewer)
    assert response.json()["role"] == "viewer"


async def test_wrong_password_and_unknown_email_look_the_same(
    client: httpx.AsyncClient, org: Org
) -> None:
    wrong = await client.post(
        "/api/auth/login", json={"email": "owner@acme.test", "password": "not the password"}
    )
    unknown = await client.post(
        "/api/auth/login", json={"email": "nobody@acme.test", "password": PASSWORD}
    )
    wrong_body = assert_problem(wrong, 401)
    unknown_body = assert_problem(unknown, 401)
    assert wrong_body["detail"] == unknown_body["detail"]
    assert "access_token" not in wrong_body
    assert wrong.headers.get("www-authenticate") == "Bearer"


async def test_login_without_a_body_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/login", json={"email": "owner@acme.test"})
    body = assert_problem(response, 422)
    assert "password" in body["detail"]


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer   ", "Basic b3duZXI6cGFzcw==", "Token abc"],
)
async def test_missing_or_malformed_header_is_401(
    client: httpx.AsyncClient, org: Org, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await client.get("/api/auth/me", headers=headers)
    body = assert_problem(response, 401)
    assert "bearer" in body["detail"].lower()
    # No data endpoint answers either.
    response = await client.get("/api/notifications", headers=headers)
    assert_problem(response, 401)


async def test_expired_token_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    now = int(time.time())
    token = jwt.encode(
        forged(runtime, org, iat=now - 7200, exp=now - 3600),
        runtime.settings.effective_jwt_secret,
        algorithm="HS256",
    )
    body = assert_problem(await me(client, token), 401)
    assert "expired" in body["detail"]


async def test_token_signed_with_another_secret_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    token = jwt.encode(forged(runtime, org), "another-secret-" + "y" * 40, algorithm="HS256")
    assert_problem(await me(client, token), 401)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, alg: str
) -> None:
    token = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(forged(runtime, org))}."
    assert_problem(await me(client, token), 401)


async def test_other_hmac_algorithms_are_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    """Only HS256 is accepted, even with the right secret."""
    token = jwt.encode(
        forged(runtime, org), runtime.settings.effective_jwt_secret, algorithm="HS384"
    )
    assert_problem(await me(client, token), 401)


@pytest.mark.parametrize("aud", ["anon", "service_role", ["other"], None])
async def test_wrong_or_missing_audience_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, aud: Any
) -> None:
    claims = forged(runtime, org, aud=aud)
    if aud is None:
        claims.pop("aud", None)
    token = jwt.encode(claims, runtime.settings.effective_jwt_secret, algorithm="HS256")
    assert_problem(await me(client, token), 401)


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": "not-a-uuid"},
        {"sub": str(uuid.uuid4())},  # nobody
        {"exp": "tomorrow"},
        {"iss": "someone-else"},
        {"nbf": int(time.time()) + 3600},
    ],
)
async def test_bad_claims_are_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, overrides: dict[str, Any]
) -> None:
    token = jwt.encode(
        forged(runtime, org, **overrides), runtime.settings.effective_jwt_secret, algorithm="HS256"
    )
    assert_problem(await me(client, token), 401)


async def test_garbage_tokens_are_refused(client: httpx.AsyncClient, org: Org) -> None:
    for token in ["x", "a.b.c", org.token + "x", org.token[:-4], "wan_", "wan_abc_def"]:
        assert_problem(await me(client, token), 401)


async def test_token_of_a_deleted_profile_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    member = await add_user(runtime, client, org, email="leaver@acme.test", role="member")
    assert (await client.get("/api/auth/me", headers=member)).status_code == 200
    async with runtime.factory() as db:
        await db.execute(delete(Profile).where(Profile.email == "leaver@acme.test"))
        await db.commit()
    body = assert_problem(await client.get("/api/auth/me", headers=member), 401)
    assert "no longer exists" in body["detail"]
    assert_problem(await client.get("/api/notifications", headers=member), 401)


async def test_role_comes_from_the_profile_not_the_token(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    """A token whose app_role claims more than the profile has gets the profile's role."""
    viewer_headers = await add_user(runtime, client, org, email="v@acme.test", role="viewer")
    viewer_id = (await client.get("/api/auth/me", headers=viewer_headers)).json()["user_id"]
    token = jwt.encode(
        forged(runtime, org, sub=viewer_id, app_role="owner"),
        runtime.settings.effective_jwt_secret,
        algorithm="HS256",
    )
    response = await me(client, token)
    assert response.status_code == 200
    assert response.json()["role"] == "viewer"
    response = await client.post(
        "/api/api-keys", json={"name": "x"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert_problem(response, 403)


async def test_each_login_is_for_its_own_user_and_org(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    """Each login is for its own user and org."""
    token = await login(client, "owner@rival.test")
    assert claims_of(token)["org_id"] == str(other_org.id)
    assert (await me(client, token)).json()["org_id"] == str(other_org.id)


async def test_profiles_get_known_roles_only(runtime: Runtime, org: Org) -> None:
    async with runtime.factory() as db:
        with pytest.raises(InvalidInput, match="role"):
            await auth.create_profile(db, org_id=org.id, email="x@acme.test", role="superuser")
        with pytest.raises(Conflict, match="already exists"):
            await auth.create_profile(db, org_id=org.id, email=" OWNER@acme.test", role="member")
        with pytest.raises(InvalidInput, match="8 characters"):
            await auth.create_profile(
                db, org_id=org.id, email="y@acme.test", role="member", password="short"
            )
