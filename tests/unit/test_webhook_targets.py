"""The SSRF rule for webhook targets (shared/webhook_targets.py): address classification, host forms that
mean an internal address, and the DNS step with an injected resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import pytest

from shared.webhook_targets import (
    TargetPolicy,
    TargetRefused,
    TargetUnresolved,
    parse_target,
    refusal_reason,
)

REFUSED_ADDRESSES = [
    "0.0.0.0",
    "127.0.0.1",
    "127.255.0.9",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "198.18.0.1",
    "::",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.1.2.3",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1",  # local-use NAT64
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001::1",  # Teredo
    "2001:db8::1",
]
PUBLIC_ADDRESSES = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_internal_addresses_are_refused(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0x7f000001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("10.0.0.1.", "10.0.0.1"),
    ],
)
def test_numeric_host_forms_are_read_as_the_address_they_mean(host: str, address: str) -> None:
    assert parse_target(f"http://{host}/x").literal == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8222/",
        "http://[::1]:8080/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://10.0.0.1/",
        "http://localhost:8080/",
        "http://LOCALHOST./",
        "http://api.localhost/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "ftp://93.184.215.14/",
        "file:///etc/passwd",
        "gopher://93.184.215.14:70/",
        "https://user:pw@93.184.215.14/",
        "https://user@93.184.215.14/",
        "https://93.184.215.14@127.0.0.1/",
        "http://[fe80::1%25eth0]/",
        "http://1.2.3.4.5/",
        "http://256.1.1.1/",
    ],
)
async def test_refused_without_dns(url: str) -> None:
    async def no_dns(host: str, port: int) -> Sequence[str]:
        raise AssertionError("no lookup is needed to refuse this")

    with pytest.raises(TargetRefused):
        await TargetPolicy(allow_private=False, resolver=no_dns).check(url)


async def test_a_name_is_refused_when_any_of_its_addresses_is_internal() -> None:
    answers = {"mixed.example": ["93.184.215.14", "10.0.0.7"], "public.example": ["93.184.215.14", "8.8.8.8"]}

    async def resolver(host: str, port: int) -> Sequence[str]:
        return answers[host]

    policy = TargetPolicy(allow_private=False, resolver=resolver)
    with pytest.raises(TargetRefused, match=r"resolves to 10\.0\.0\.7") as refused:
        await policy.check("https://mixed.example/hook")
    assert "mixed.example" not in refused.value.reason  # the reason for logs names no address
    target = await policy.check("https://public.example:8443/hook?x=1")
    assert [str(a) for a in target.addresses] == ["93.184.215.14", "8.8.8.8"]
    assert (target.host, target.port, target.target, target.host_header) == (
        "public.example",
        8443,
        "/hook?x=1",
        "public.example:8443",
    )


async def test_allow_private_lets_internal_targets_through_but_not_other_schemes_or_userinfo() -> None:
    async def resolver(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    policy = TargetPolicy(allow_private=True, resolver=resolver)
    assert [str(a) for a in (await policy.check("http://localhost:9/h")).addresses] == ["127.0.0.1"]
    assert [str(a) for a in (await policy.check("http://[::ffff:127.0.0.1]/")).addresses] == ["127.0.0.1"]
    for url in ("ftp://127.0.0.1/", "http://u:p@127.0.0.1/"):
        with pytest.raises(TargetRefused):
            await policy.check(url)


async def test_a_name_that_does_not_resolve_or_is_too_slow_is_unresolved() -> None:
    async def nxdomain(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def hangs(host: str, port: int) -> Sequence[str]:
        await asyncio.Event().wait()
        return []

    with pytest.raises(TargetUnresolved):
        await TargetPolicy(allow_private=False, resolver=nxdomain).check("https://nowhere.example/")
    with pytest.raises(TargetUnresolved, match="within"):
        await TargetPolicy(allow_private=False, resolver=hangs, resolve_timeout=0.05).check(
            "https://slow.example/"
        )


async def test_the_system_resolver_does_not_block_the_loop() -> None:
    """getaddrinfo runs in a thread: the loop keeps turning while it works."""
    policy = TargetPolicy(allow_private=True)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        target = await policy.check("http://localhost:1/")
    finally:
        task.cancel()
    assert ticks > 0 and all(refusal_reason(a) == "loopback" for a in target.addresses)


def test_private_targets_are_allowed_by_default_only_in_local_deployments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.settings import Settings

    real = {
        "peppers": "p" * 40,
        "encryption_keys": "cmVhbC1lbmNyeXB0aW9uLWtleS1ub3QtYS1wbGFjZWhvbGQ=",
        "nats_url": "tls://127.0.0.1:4222",
    }
    assert Settings().allow_private_webhooks is True  # local
    assert Settings(deployment="production", **real).allow_private_webhooks is False
    assert Settings(deployment="staging", **real).allow_private_webhooks is False
    assert Settings(webhook_allow_private=False).allow_private_webhooks is False
    monkeypatch.setenv("CNX_WEBHOOK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("CNX_WEBHOOK_SECRET_OVERLAP", "90s")
    settings = Settings(deployment="production", **real)
    assert settings.allow_private_webhooks is True and settings.webhook_secret_overlap.total_seconds() == 90
    with pytest.raises(ValueError, match="CNX_WEBHOOK_PROXY"):
        Settings(webhook_proxy="socks5://proxy:1080")
    with pytest.raises(ValueError, match="CNX_WEBHOOK_TIMEOUT"):
        Settings(webhook_timeout="0s")
