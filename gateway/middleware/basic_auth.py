"""``basic_auth``: HTTP Basic authentication (RFC 7617) against an htpasswd file.

Missing, malformed or wrong credentials get 401 with ``WWW-Authenticate: Basic realm=...``
and the upstream is never reached.  Password hashes are slow on purpose (bcrypt, Argon2id),
so each check runs in a thread: the event loop keeps serving others meanwhile.  A verified
``Authorization`` value is remembered (keyed by its SHA-256, never the password itself)
until the file changes, so a browser sending the same header with every request pays the
hash once, as Caddy's basic auth cache does.

Brute force: failed attempts spend tokens of a per-client bucket (``max_failures`` per
``failure_window`` seconds, shared by all worker processes like ``rate_limit``'s); with the
bucket empty the client gets 429 and its guesses are not even checked.  The token is taken
before the check and given back on success, so parallel guesses cannot overtake the count.

The file is re-read when its mtime, size or inode changes, so adding a user needs no restart;
a file that turns invalid is logged and the previous users stay in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

from gateway.config import MiddlewareSettings, Settings
from gateway.errors import TooManyRequests, Unauthorized
from gateway.headers import TrustedProxies, header_value
from gateway.middleware.htpasswd import (
    HtpasswdError,
    check_user,
    parse_basic_credentials,
    read_htpasswd,
)
from gateway.middleware.rate_limit import bucket_table, client_address, retry_after
from gateway.request import Handler, Request

log = logging.getLogger("gateway.basic_auth")

DEFAULT_REALM = "Restricted"
DEFAULT_MAX_FAILURES = 5
DEFAULT_FAILURE_WINDOW = 60.0
VERIFIED_CACHE_SIZE = 1024
# A throwaway bcrypt hash (cost 10, htpasswd -B's default) to check unknown users against
# when the file has no users at all.
_EMPTY_FILE_DECOY = b"$2b$10$a8qcbdZ8pAtkir1EtvToFeOP87pUCYnG57Jl2zk7lLfIOZ75KDPaq"


class UserFile:
    """The htpasswd file's users, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signature: tuple[int, int, int] | None = None
        self.users: dict[str, bytes] = {}
        self.decoy = _EMPTY_FILE_DECOY
        self.verified: OrderedDict[bytes, str] = OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self.signature is not None:
                log.warning("%s: %s; keeping the users read before", self.path, exc.strerror)
                self.signature = None
            return
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self.signature:
            return
        self.signature = signature
        try:
            users = read_htpasswd(self.path)
        except HtpasswdError as exc:
            log.warning("%s: %s; keeping the users read before", self.path, exc)
            return
        self.users = users
        self.decoy = next(iter(users.values()), _EMPTY_FILE_DECOY)
        self.verified.clear()  # a changed or removed password must not stay accepted
        log.info("%s: %d user(s) loaded", self.path, len(users))

    def remembered(self, digest: bytes) -> str | None:
        user = self.verified.get(digest)
        if user is not None:
            self.verified.move_to_end(digest)
        return user

    def remember(self, digest: bytes, user: str) -> None:
        self.verified[digest] = user
        if len(self.verified) > VERIFIED_CACHE_SIZE:
            self.verified.popitem(last=False)


class BasicAuth:
    applies_to_websocket = True

    def __init__(self, config: MiddlewareSettings, settings: Settings) -> None:
        options = config.options
        self.realm: str = options.get("realm", DEFAULT_REALM)
        self.users = UserFile(options["htpasswd"])
        max_failures: int = options.get("max_failures", DEFAULT_MAX_FAILURES)
        window: float = options.get("failure_window", DEFAULT_FAILURE_WINDOW)
        self.failures = bucket_table(
            settings, f"{config.name}:failures", max_failures / window, max_failures
        )
        self.trusted = TrustedProxies(settings.gateway.trusted_proxies)

    def wrap(self, handler: Handler) -> Handler:
        async def authenticated(request: Request) -> None:
            await self.authenticate(request)
            await handler(request)

        return authenticated

    async def authenticate(self, request: Request) -> None:
        """Return if the request carries valid credentials, else raise 401 (or 429)."""
        users = self.users
        users.refresh()
        authorization = header_value(request.headers, b"authorization")
        if authorization is not None:
            digest = hashlib.sha256(authorization).digest()
            if users.remembered(digest) is not None:
                return
        address = client_address(request.scope, self.trusted)
        key = address.encode()
        credentials = parse_basic_credentials(authorization)
        if credentials is None and authorization is None:
            raise Unauthorized("authentication required", self.realm)
        # Every check is paid for with a token up front, so a burst of parallel guesses
        # cannot all slip past an empty bucket; a successful one gets its token back.
        wait = self.failures.take(key)
        if wait:
            raise TooManyRequests(
                f"too many failed logins from {address}; try again later", retry_after(wait)
            )
        if credentials is None:
            raise Unauthorized("malformed Basic credentials", self.realm)
        user, password = credentials
        table, decoy = users.users, users.decoy
        if await asyncio.to_thread(check_user, table, user, password, decoy):
            self.failures.give_back(key)
            if users.users is table:  # not re-read meanwhile
                users.remember(hashlib.sha256(authorization or b"").digest(), user)
            return
        log.info("basic auth failed for user %r from %s", user, address)
        raise Unauthorized("wrong user name or password", self.realm)
