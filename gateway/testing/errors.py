"""The one error of ``gateway.testing``."""

from __future__ import annotations


class GatewayStartError(Exception):
    """The gateway (or the in-process app) did not become ready; the message has its output."""
