"""The demo backend's outbox as tests read it: the confirmation link sent to an address."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from urllib.parse import urlsplit


def confirmation_path(outbox: Path, address: str) -> str:
    """Path and query of the link in the confirmation e-mail written for ``address``."""
    for path in outbox.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == address:
            body = message.get_body(("plain",))
            assert body is not None
            match = re.search(r"https://\S+", body.get_content())
            assert match is not None
            link = urlsplit(match.group(0))
            return f"{link.path}?{link.query}"
    raise AssertionError(f"no e-mail to {address}")
