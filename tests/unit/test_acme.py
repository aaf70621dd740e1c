"""ACME's pure parts: which names get certificates, when to renew, the back-off, the TLS-ALPN-01
certificate, the HTTP-01 answers, the files, and the ``[tls.acme]`` config table."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.checks import acme_problems
from gateway.config import ACMESettings, ConfigError, parse_settings
from gateway.tls.acme import (
    ACME_IDENTIFIER_OID,
    TLSALPN01,
    ACMEStore,
    acme_names,
    describe_failure,
    is_local_name,
    renewal_time,
    retry_delay,
    tls_alpn01_certificate,
)
from gateway.tls.acme_manager import ACMEManager, ChallengeFiles, HTTP01App, OrderFailed
from gateway.tls.certs import CertificateAuthority
from gateway.tls.context import challenge_ssl_context

PATH = Path("/srv/gw/config.toml")
ACME = "/.well-known/acme-challenge/"


@pytest.mark.parametrize(
    "name",
    ["localhost", "app.localhost", "127.0.0.1", "::1", "10.0.0.5", "shop.test", "myhost"],
)
def test_local_names(name: str) -> None:
    assert is_local_name(name)


@pytest.mark.parametrize("name", ["example.org", "api.example.org", "testing.example.com"])
def test_public_names(name: str) -> None:
    assert not is_local_name(name)


def test_acme_names_skip_local_names_and_wildcards() -> None:
    names = ("localhost", "example.org", "*.example.org", "api.example.org", "127.0.0.1")
    assert acme_names(names) == ("example.org", "api.example.org")


def test_renewal_when_a_third_of_the_lifetime_is_left() -> None:
    ca = CertificateAuthority.create()
    leaf = ca.issue_leaf(["example.org"], lifetime=timedelta(days=90))
    not_before = leaf.certificate.not_valid_before_utc
    lifetime = leaf.certificate.not_valid_after_utc - not_before
    assert renewal_time(leaf.certificate) == not_before + lifetime * 2 / 3
    left = leaf.certificate.not_valid_after_utc - renewal_time(leaf.certificate)
    assert left > timedelta(days=29)


def test_back_off_doubles_from_five_minutes_to_a_day() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays[:4] == [timedelta(minutes=m) for m in (5, 10, 20, 40)]
    assert delays[-1] == timedelta(days=1)
    assert delays == sorted(delays)
    # At most 4 orders in the first hour: inside Let's Encrypt's 5 failures/name/hour.
    elapsed, orders = timedelta(0), 1
    for n in range(1, 10):
        elapsed += retry_delay(n)
        if elapsed < timedelta(hours=1):
            orders += 1
    assert orders <= 4
    assert retry_delay(10_000) == timedelta(days=1)


def test_tls_alpn01_certificate_carries_the_key_authorization_digest() -> None:
    cert_pem, key_pem = tls_alpn01_certificate("example.org", "token.thumbprint")
    certificate = x509.load_pem_x509_certificate(cert_pem)
    extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert extension.critical
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    digest = hashlib.sha256(b"token.thumbprint").digest()
    assert extension.value.value == b"\x04\x20" + digest  # DER OCTET STRING
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.org"]
    assert b"PRIVATE KEY" in key_pem


def test_tls_alpn01_challenges_parse_and_answer_with_the_key_authorization() -> None:
    body = messages.ChallengeBody.from_json(
        {"type": "tls-alpn-01", "url": "https://ca/chall/1", "status": "pending", "token": "A" * 43}
    )
    assert isinstance(body.chall, TLSALPN01)
    from josepy.jwk import JWKEC

    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    response, validation = body.chall.response_and_validation(key)
    assert validation == body.chall.key_authorization(key)
    assert validation.startswith("A" * 43 + ".")
    assert response.to_partial_json() == {}  # RFC 8555 §7.5.1: an empty object


def test_store_creates_the_account_key_once_owner_only(tmp_path: Path) -> None:
    store = ACMEStore(tmp_path, "https://acme.example:14000/dir")
    assert store.root == tmp_path / "acme" / "acme.example_14000"
    first = store.account_key()
    path = store.root / "account-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.account_key().thumbprint() == first.thumbprint()


def test_store_saves_certificates_per_name_owner_only(tmp_path: Path) -> None:
    store = ACMEStore(tmp_path, "https://acme-v02.api.letsencrypt.org/directory")
    assert store.load("example.org") is None
    ca = CertificateAuthority.create()
    leaf = ca.issue_leaf(["example.org"])
    saved = store.save("example.org", leaf.cert_pem() + ca.cert_pem(), leaf.key_pem())
    assert saved.cert_file == store.root / "example.org" / "cert.pem"
    for path in (saved.cert_file, saved.key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = store.load("example.org")
    assert loaded is not None
    assert loaded.certificate.serial_number == leaf.certificate.serial_number


def test_store_ignores_an_unreadable_certificate(tmp_path: Path) -> None:
    store = ACMEStore(tmp_path, "https://ca.example/dir")
    cert_file, key_file = store.paths("example.org")
    cert_file.parent.mkdir(parents=True)
    cert_file.write_text("not a certificate")
    key_file.write_text("x")
    assert store.load("example.org") is None


# --- HTTP-01 on the plain-HTTP listener -----------------------------------------------------


def call(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "path": path}, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def redirect(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 308, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_http01_answers_published_tokens_from_files_and_passes_the_rest_on(
    tmp_path: Path,
) -> None:
    files = ChallengeFiles(tmp_path, "http-01")
    app = HTTP01App(redirect, files)
    files.publish("example.org", "tok-1_A", "tok-1_A.thumb")
    # Written where every gateway process reads it, whichever accepts the validation.
    assert (tmp_path / "challenges" / "http-01" / "tok-1_A").read_text() == "tok-1_A.thumb"
    assert call(app, "/.well-known/acme-challenge/tok-1_A") == (200, b"tok-1_A.thumb")
    assert (
        call(HTTP01App(redirect, ChallengeFiles(tmp_path, "http-01")), ACME + "tok-1_A")[0] == 200
    )
    assert call(app, ACME + "other")[0] == 404
    assert call(app, ACME + "..%2f..%2fetc")[0] == 404
    assert call(app, ACME + "../../account-key.pem")[0] == 404
    assert call(app, "/anything") == (308, b"")
    files.unpublish("example.org", "tok-1_A")
    assert call(app, ACME + "tok-1_A")[0] == 404


def test_tls_alpn01_answers_are_files_for_every_process(tmp_path: Path) -> None:
    files = ChallengeFiles(tmp_path, "tls-alpn-01")
    files.publish("example.org", "tok", "tok.thumb")
    assert set(files.alpn_certificates()) == {"example.org"}
    pem = (tmp_path / "challenges" / "tls-alpn-01" / "example.org.pem").read_bytes()
    assert b"PRIVATE KEY" in pem and b"CERTIFICATE" in pem
    assert (
        stat.S_IMODE((tmp_path / "challenges" / "tls-alpn-01" / "example.org.pem").stat().st_mode)
        == 0o600
    )
    assert challenge_ssl_context(pem) is not None
    files.unpublish("example.org", "tok")
    assert files.alpn_certificates() == {}


def test_order_lock_is_exclusive_across_holders(tmp_path: Path) -> None:
    store = ACMEStore(tmp_path, "https://ca.example/dir")
    with store.order_lock("example.org") as first:
        assert first
        # flock locks belong to the open file description: a second open is another holder.
        with store.order_lock("example.org") as second:
            assert not second
        with store.order_lock("other.org") as other:
            assert other
    with store.order_lock("example.org") as again:
        assert again


def test_failures_are_shared_through_the_store(tmp_path: Path) -> None:
    store = ACMEStore(tmp_path, "https://ca.example/dir")
    assert store.retry_state("example.org") is None
    when = datetime(2026, 1, 1, 12, tzinfo=UTC)
    store.record_failure("example.org", 3, when)
    assert ACMEStore(tmp_path, "https://ca.example/dir").retry_state("example.org") == (3, when)
    store.clear_failures("example.org")
    store.clear_failures("example.org")
    assert store.retry_state("example.org") is None


# --- [tls.acme] -----------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "gateway": {"hostnames": ["localhost", "example.org"]},
    "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
    "routes": [{"path_prefix": "/", "upstream": "app"}],
}


def with_acme(acme: dict[str, Any], **gateway: Any) -> dict[str, Any]:
    return {**BASE, "gateway": {**BASE["gateway"], **gateway}, "tls": {"acme": acme}}


def test_acme_table_is_read_with_defaults() -> None:
    settings = parse_settings(with_acme({"email": "ops@example.org"}), PATH)
    assert settings.tls.acme == ACMESettings(email="ops@example.org")
    assert settings.tls.acme.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert settings.tls.acme.challenge == "http-01"
    assert settings.tls.dir == Path("/srv/gw/certs")
    assert parse_settings(BASE, PATH).tls.acme is None


def test_acme_table_every_key() -> None:
    acme = {
        "email": "a@b.org",
        "directory": "https://127.0.0.1:14000/dir",
        "challenge": "tls-alpn-01",
        "ca_file": "pebble.pem",
    }
    settings = parse_settings(with_acme(acme), PATH)
    assert settings.tls.acme == ACMESettings(
        "a@b.org", "https://127.0.0.1:14000/dir", "tls-alpn-01", Path("/srv/gw/pebble.pem")
    )


@pytest.mark.parametrize(
    ("acme", "gateway", "expected"),
    [
        ({"challenge": "dns-01"}, {}, ["[tls.acme] challenge = 'dns-01'", "'http-01'"]),
        ({"directory": "http://ca/dir"}, {}, ["[tls.acme] directory", "https:// URL"]),
        ({"email": "nobody"}, {}, ["[tls.acme] email = 'nobody'", "e-mail address"]),
        ({"emial": "a@b.org"}, {}, ["[tls.acme] emial", "unknown key", "email"]),
    ],
)
def test_acme_table_errors_name_file_key_value_and_what_is_allowed(
    acme: dict[str, Any], gateway: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(with_acme(acme, **gateway), PATH)
    [line] = info.value.errors
    assert line.startswith(str(PATH))
    for part in expected:
        assert part in line, line


def test_failures_are_described_in_one_line() -> None:
    request = requests.Request("GET", "https://ca.example/dir").prepare()
    refused = requests.ConnectionError(
        "HTTPSConnectionPool(...): Max retries exceeded (Caused by NewConnectionError("
        "'<...>: Failed to establish a new connection: [Errno 111] Connection refused'))",
        request=request,
    )
    assert describe_failure(refused) == "cannot reach https://ca.example/dir: Connection refused"
    problem = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="too many")
    assert describe_failure(problem) == "urn:ietf:params:acme:error:rateLimited: too many"


def test_check_reports_an_unreadable_acme_ca_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    good, bad = tmp_path / "good.pem", tmp_path / "bad.pem"
    good.write_bytes(CertificateAuthority.create().cert_pem())
    bad.write_text("not PEM")

    def problems(ca_file: str) -> list[str]:
        return acme_problems(parse_settings(with_acme({"ca_file": ca_file}), config))

    assert problems("good.pem") == []
    [line] = problems("bad.pem")
    assert line.startswith(f"{config}: [tls.acme] ca_file: {bad} does not contain a PEM")
    [line] = problems("missing.pem")
    assert f"cannot read {tmp_path / 'missing.pem'}" in line
    assert acme_problems(parse_settings(BASE, config)) == []


# --- ACMEManager._order: the decisions around one order, with a fake protocol client ---------


class FakeClient:
    def __init__(self, ca: CertificateAuthority, error: Exception | None = None) -> None:
        self.ca, self.error, self.orders = ca, error, 0

    def issue(self, name: str, publish: Any, unpublish: Any) -> tuple[bytes, bytes]:
        self.orders += 1
        if self.error is not None:
            raise self.error
        leaf = self.ca.issue_leaf([name])
        return leaf.cert_pem() + self.ca.cert_pem(), leaf.key_pem()


NOW = datetime(2030, 1, 1, tzinfo=UTC)


def manager(tmp_path: Path, client: FakeClient) -> ACMEManager:
    installed: list[str] = []
    m = ACMEManager(
        ACMESettings(directory="https://ca.example/dir"),
        tmp_path,
        ("example.org",),
        lambda name, stored: installed.append(name),
        lambda name, pem: None,
        lambda name: None,
        clock=lambda: NOW,
    )
    m.client = client  # type: ignore[assignment]
    return m


def test_an_order_stores_the_certificate_and_clears_failures(tmp_path: Path) -> None:
    client = FakeClient(CertificateAuthority.create())
    m = manager(tmp_path, client)
    m.store.record_failure("example.org", 2, NOW)
    issued = m._order("example.org", None)
    assert issued is not None and client.orders == 1
    assert m.store.load("example.org") is not None
    assert m.store.retry_state("example.org") is None


def test_no_order_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    client = FakeClient(CertificateAuthority.create())
    m = manager(tmp_path, client)
    with m.store.order_lock("example.org") as ours:
        assert ours
        assert m._order("example.org", None) is None
    assert client.orders == 0


def test_no_order_when_another_process_renewed_meanwhile(tmp_path: Path) -> None:
    client = FakeClient(CertificateAuthority.create())
    m = manager(tmp_path, client)
    first = m._order("example.org", None)
    assert first is not None
    # This process still saw "no certificate": the stored one is newer, so no second order.
    assert m._order("example.org", None) is None
    assert client.orders == 1


def test_failures_back_off_together_and_rate_limits_wait_an_hour(tmp_path: Path) -> None:
    client = FakeClient(CertificateAuthority.create(), error=OSError("boom"))
    m = manager(tmp_path, client)
    delays = []
    for _ in range(3):
        with pytest.raises(OrderFailed) as info:
            m._order("example.org", None)
        delays.append(info.value.delay)
    assert delays == [timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=20)]
    assert m.store.retry_state("example.org") == (3, NOW + timedelta(minutes=20))
    client.error = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="slow")
    with pytest.raises(OrderFailed, match="rateLimited: slow") as info:
        m._order("example.org", None)
    assert info.value.failures == 4 and info.value.delay == timedelta(hours=1)
