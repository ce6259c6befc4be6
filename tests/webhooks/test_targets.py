"""The SSRF guard's address rule (pure: no database, no network)."""

from __future__ import annotations

import ipaddress

import pytest

from wanotify.settings import Settings
from wanotify.webhooks import targets
from wanotify.webhooks.targets import (
    TargetPolicy,
    TargetRefused,
    address_problem,
    check_url,
    resolve_target,
)

STRICT = TargetPolicy()


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com/hooks",
        "http://93.184.216.34/hooks",
        "https://8.8.8.8:8443/x",
        "https://[2606:4700:4700::1111]/hooks",
        "  https://app.example.com/hooks  ",
    ],
)
def test_public_targets_are_allowed(url: str) -> None:
    assert check_url(url, STRICT) == url.strip()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/x", "loopback"),
        ("http://127.1/x", "loopback"),
        ("http://2130706433/x", "loopback"),
        ("http://0x7f000001/x", "loopback"),
        ("http://[::1]/x", "loopback"),
        ("http://10.1.2.3/x", "private"),
        ("http://172.16.0.1/x", "private"),
        ("http://172.31.255.254/x", "private"),
        ("http://192.168.1.10/x", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://[fc00::1]/x", "private"),
        ("http://[fd12:3456::1]/x", "private"),
        ("http://[::ffff:127.0.0.1]/x", "loopback"),
        ("http://[::ffff:10.0.0.5]/x", "private"),
        ("http://[::ffff:169.254.169.254]/x", "link-local"),
        ("http://0.0.0.0:8000/x", "unspecified"),
        ("http://[::]/x", "unspecified"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://[ff02::1]/x", "multicast"),
        ("http://240.0.0.1/x", "reserved"),
        ("http://100.64.0.1/x", "non-public"),
    ],
)
def test_non_public_ip_literals_are_refused(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused) as refused:
        check_url(url, STRICT)
    message = str(refused.value)
    assert reason in message and "WANOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS=true" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8000/x",
        "http://LOCALHOST./x",
        "http://api.localhost/x",
        "http://localhost.localdomain/x",
        "http://ip6-localhost/x",
    ],
)
def test_localhost_names_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused, match="names this machine"):
        check_url(url, STRICT)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com", "not a url", "http://"],
)
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(TargetRefused, match=r"http\(s\) URL"):
        check_url(url, STRICT)


def test_allow_private_setting_allows_everything_http() -> None:
    policy = TargetPolicy.of(allow_private=True)
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://169.254.169.254/"):
        assert check_url(url, policy) == url
    with pytest.raises(TargetRefused):
        check_url("ftp://127.0.0.1/x", policy)


def test_allowed_hosts_override_only_those_hosts() -> None:
    policy = TargetPolicy.of(allowed_hosts=["Hooks.Internal.", "10.0.0.5", "[::1]"])
    assert check_url("http://hooks.internal/x", policy)
    assert check_url("http://10.0.0.5:8080/x", policy)
    assert check_url("http://[::1]/x", policy)
    with pytest.raises(TargetRefused):
        check_url("http://10.0.0.6/x", policy)
    with pytest.raises(TargetRefused):
        check_url("http://localhost/x", policy)


def test_policy_from_settings() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        webhook_allow_private_targets=True,
        webhook_allowed_hosts=["a.test"],
    )
    assert TargetPolicy.from_settings(settings) == TargetPolicy(True, frozenset({"a.test"}))
    default = Settings(_env_file=None)  # type: ignore[call-arg]
    assert TargetPolicy.from_settings(default) == STRICT  # the guard is on by default


def test_address_rule() -> None:
    assert address_problem(ipaddress.ip_address("8.8.8.8")) is None
    assert address_problem(ipaddress.ip_address("2606:4700:4700::1111")) is None
    assert address_problem(ipaddress.ip_address("2002:7f00:1::1")) == "a loopback address"  # 6to4


async def test_resolved_addresses_must_all_be_public(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"good.test": ["93.184.216.34"], "mixed.test": ["93.184.216.34", "10.0.0.5"]}

    async def fake(host: str, port: int) -> list[str]:
        return answers.get(host, [])

    monkeypatch.setattr(targets, "resolve", fake)
    assert await resolve_target("good.test", 443, STRICT) == "93.184.216.34"
    with pytest.raises(TargetRefused) as refused:
        await resolve_target("mixed.test", 443, STRICT)
    assert "resolves to a private address 10.0.0.5" in str(refused.value)
    allowed = TargetPolicy.of(allowed_hosts=["mixed.test"])
    assert await resolve_target("mixed.test", 443, allowed) == "93.184.216.34"
    assert await resolve_target("mixed.test", 443, TargetPolicy.of(True)) == "93.184.216.34"
    with pytest.raises(OSError):
        await resolve_target("nowhere.test", 443, STRICT)


async def test_system_resolver_resolves_localhost_to_loopback() -> None:
    addresses = await targets.system_resolve("localhost", 80)
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    with pytest.raises(TargetRefused, match="loopback"):
        await resolve_target("127.0.0.1", 80, STRICT)
