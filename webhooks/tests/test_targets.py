"""The SSRF guard: URL form, address classification (IPv4, IPv6, IPv4 inside IPv6), DNS names
resolving to refused addresses (resolution mocked), and the settings that allow more."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from webhooks.targets import TargetError, address_refusal, target_check, target_parse, target_resolve


@pytest.fixture(autouse=True)
def _strict(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    settings.WEBHOOK_ALLOWED_NETWORKS = []


REFUSED = {
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "169.254.169.254": "link-local",  # cloud metadata
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "0.0.0.0": "unspecified",
    "100.64.0.1": "non-public",  # carrier-grade NAT
    "192.0.2.1": "non-public",  # documentation
    "2001:db8::1": "non-public",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "ff02::1": "multicast",
    "::ffff:10.0.0.1": "private",  # IPv4-mapped
    "::ffff:127.0.0.1": "loopback",
    "::ffff:169.254.169.254": "link-local",
    "2002:a00:1::1": "private",  # 6to4 of 10.0.0.1
    "64:ff9b::7f00:1": "loopback",  # NAT64 of 127.0.0.1
}
PUBLIC = ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "kind"), sorted(REFUSED.items()))
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    reason = address_refusal(address)
    assert reason is not None and (f"is a {kind} address" in reason or f"is an {kind} address" in reason), reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(address) is None


def test_allow_private_admits_private_and_loopback_only(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    for address in ("10.0.0.1", "127.0.0.1", "::1", "fd00::5", "::ffff:192.168.0.9"):
        assert address_refusal(address) is None, address
    for address in ("169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1", "100.64.0.1", "240.0.0.1"):
        assert address_refusal(address) is not None, address


def test_allowed_networks_admit_exactly_those(settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32", "fd00:1::/64"]
    assert address_refusal("127.0.0.1") is None
    assert address_refusal("127.0.0.2") is not None
    assert address_refusal("fd00:1::9") is None
    assert address_refusal("fd00:2::9") is not None
    assert address_refusal("10.0.0.1") is not None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("example.com/hook", "scheme"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https:///hook", "no host"),
        ("https://example.com:99999/", "port"),
        ("https://example.com/a b", "whitespace"),
        ("https://example.com/\r\nX: y", "whitespace"),
        ("", "required"),
        ("https://example.com/" + "a" * 2000, "longer"),
    ],
)
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        target_parse(url)


def test_parse_keeps_host_header_and_path() -> None:
    target = target_parse("HTTPS://Hooks.Example.com:8443/in/cyto?x=1#frag")
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 8443)
    assert target.path == "/in/cyto?x=1" and target.host_header == "hooks.example.com:8443"
    v6 = target_parse("http://[2606:4700:4700::1111]/hook")
    assert v6.host == "2606:4700:4700::1111" and v6.host_header == "[2606:4700:4700::1111]" and v6.port == 80
    assert target_parse("http://example.com").path == "/"


def test_literal_addresses_are_checked_without_dns() -> None:
    with mock.patch("webhooks.targets.host_addresses") as dns:
        with pytest.raises(TargetError, match=r"169\.254\.169\.254 is a link-local address"):
            target_check("http://169.254.169.254/latest/meta-data/")
        with pytest.raises(TargetError, match="private"):
            target_check("http://[::ffff:10.0.0.1]/")
        assert target_check("https://8.8.8.8/hook")[1] == ["8.8.8.8"]
    dns.assert_not_called()


def test_names_resolving_to_refused_addresses_are_refused() -> None:
    with mock.patch("webhooks.targets.host_addresses", return_value=["10.1.2.3"]):
        with pytest.raises(TargetError, match=r"internal\.example\.com resolves to 10\.1\.2\.3 is a private") as caught:
            target_check("https://internal.example.com/hook")
    assert caught.value.final
    # one refused address among public ones refuses the name (no picking the good one)
    with mock.patch("webhooks.targets.host_addresses", return_value=["93.184.215.14", "::1"]):
        with pytest.raises(TargetError, match="loopback"):
            target_check("https://mixed.example.com/hook")
    with mock.patch("webhooks.targets.host_addresses", return_value=["93.184.215.14", "2606:4700::1"]):
        target, addresses = target_check("https://public.example.com/hook")
    assert addresses == ["93.184.215.14", "2606:4700::1"] and target.host == "public.example.com"


def test_localhost_is_refused_by_what_it_resolves_to() -> None:
    with pytest.raises(TargetError, match="loopback"):
        target_check("http://localhost:8000/hook")


def test_a_name_that_does_not_resolve_may_resolve_later() -> None:
    with mock.patch("webhooks.targets.host_addresses", side_effect=OSError("Name or service not known")):
        with pytest.raises(TargetError, match="does not resolve") as caught:
            target_resolve(target_parse("https://nowhere.example.com/"))
    assert not caught.value.final


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f.0.0.1/", "http://127.1/", "http://0/"])
def test_numeric_host_spellings_are_judged_by_the_address_they_reach(url: str) -> None:
    # not IP literals to ipaddress, but the resolver turns them into 127.0.0.1 / 0.0.0.0
    with pytest.raises(TargetError, match=r"loopback|unspecified"):
        target_check(url)
