"""The services one worker's endpoints share, built at start-up by ``app.lifespan``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.config import BackendSettings

from .db import Database
from .mail import Mailer
from .ratelimit import LoginThrottle
from .tokens import TokenCodec


@dataclass(slots=True)
class Services:
    settings: BackendSettings
    db: Database
    tokens: TokenCodec
    mailer: Mailer
    # Base of the links in e-mails, e.g. "https://localhost:8443".
    public_url: str
    # Index of this worker (reported by /health).
    worker: int = 0
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # Not for secrets: the random array is demo data.
    random: random.Random = field(default_factory=random.Random)


def services(request: Request) -> Services:
    found = request.app.state.services
    assert isinstance(found, Services)
    return found
