"""Confirmation e-mails: the link's origin, the .eml in the outbox, delivery over SMTP."""

from __future__ import annotations

import email
import email.policy
import logging
import socketserver
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from backend.app import create_app
from backend.mail import Mailer, confirmation_message, public_base_url
from gateway.config import Settings, parse_settings

if TYPE_CHECKING:
    from conftest import Api


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, "https://localhost:8443"),
        (
            {"gateway": {"hostnames": ["api.example.org"], "https_port": 443}},
            "https://api.example.org",
        ),
        ({"gateway": {"hostnames": ["::1"]}}, "https://[::1]:8443"),
        ({"backend": {"public_url": "https://example.org/api/"}}, "https://example.org/api"),
    ],
)
def test_public_base_url(
    tmp_path: Path, config: dict[str, dict[str, object]], expected: str
) -> None:
    assert public_base_url(parse_settings(config, tmp_path / "config.toml")) == expected


async def register(settings: Settings, username: str) -> httpx.Response:
    """POST /register to an in-process app built from ``settings`` (its own lifespan)."""
    app = create_app(settings, environ={})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            body = {"username": username, "email": f"{username}@example.com"}
            return await client.post("/register", json={**body, "password": "password1"})


@pytest.mark.anyio
async def test_outbox_files_are_complete_private_messages(tmp_path: Path) -> None:
    mailer = Mailer(tmp_path / "outbox")
    message = confirmation_message(
        sender="no-reply@example.org",
        recipient="bob@example.com",
        username="bob",
        link="https://example.org/user_confirm/1?token=abc",
    )
    path = await mailer.store(message)
    assert path.suffix == ".eml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert parsed["To"] == "bob@example.com" and parsed["Message-ID"].endswith("@example.org>")
    assert parsed["Date"] and parsed["Subject"]
    body = parsed.get_body(("plain",))
    assert body is not None and "https://example.org/user_confirm/1?token=abc" in body.get_content()
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == [path.name]


class FakeSMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib to hand over one message."""

    received: list[bytes]

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 fake ESMTP")
        while line := self.rfile.readline():
            command = line.decode().strip().upper()
            if command.startswith("EHLO"):
                self.reply("250 fake")
            elif command == "DATA":
                self.reply("354 go on")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                self.received.append(data)
                self.reply("250 queued")
            elif command == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, list[bytes]]]:
    received: list[bytes] = []
    handler = type("Handler", (FakeSMTPHandler,), {"received": received})
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1], received
        finally:
            server.shutdown()
            thread.join(timeout=5)


@pytest.mark.anyio
async def test_registration_mail_is_delivered_over_smtp(
    tmp_path: Path, smtp_server: tuple[int, list[bytes]]
) -> None:
    port, received = smtp_server
    settings: Settings = parse_settings(
        {"backend": {"smtp_host": "127.0.0.1", "smtp_port": port, "mail_from": "hi@example.org"}},
        tmp_path / "config.toml",
    )
    response = await register(settings, "dave")
    assert response.status_code == 201
    assert len(received) == 1
    message = email.message_from_bytes(received[0], policy=email.policy.default)
    assert message["To"] == "dave@example.com" and message["From"] == "hi@example.org"
    assert len(list(settings.backend.outbox.glob("*.eml"))) == 1


@pytest.mark.anyio
async def test_smtp_failure_does_not_fail_registration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed: connections are refused
    settings = parse_settings(
        {"backend": {"smtp_host": "127.0.0.1", "smtp_port": port}}, tmp_path / "config.toml"
    )
    response = await register(settings, "erin")
    assert response.status_code == 201
    assert "SMTP delivery" in caplog.text
    assert len(list(settings.backend.outbox.glob("*.eml"))) == 1


@pytest.mark.anyio
async def test_registration_logs_the_message_path_and_keeps_the_link_on_one_line(
    api: Api, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="backend.mail"):
        account = await api.register()
    link = api.confirmation_link(account.email)
    assert len(link) > 200  # long enough that quoted-printable would have wrapped it
    [record] = [r for r in caplog.records if "confirmation e-mail" in r.getMessage()]
    line = record.getMessage()
    [path] = list(settings.backend.outbox.glob("*.eml"))
    assert f"user {account.id} written to {path}; link: {link}" in line
    raw = path.read_bytes()
    assert b"Content-Transfer-Encoding: 7bit" in raw
    assert link.encode() + b"\n" in raw.splitlines(keepends=True)  # whole, on a line of its own
    assert b"=\n" not in raw


@pytest.mark.anyio
async def test_an_unwritable_outbox_fails_the_registration_whole(
    api: Api, client: httpx.AsyncClient, settings: Settings
) -> None:
    """The message is written inside the account's transaction: no message, no account.  An
    error of the outbox is a 500 on both databases, never "the database is unavailable"."""
    outbox = settings.backend.outbox
    if outbox.exists():
        outbox.rmdir()
    outbox.write_text("a file where the outbox directory should be")
    body = {"username": "nomail", "email": "nomail@example.com", "password": "long enough"}
    response = await client.post("/register", json=body)
    assert response.status_code == 500
    assert response.json() == {"message": "Internal server error"}
    outbox.unlink()
    response = await client.post("/register", json=body)
    assert response.status_code == 201  # the name was never taken
