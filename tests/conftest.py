"""Settings shared by every test directory."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# The suite runs next to real servers on small CI machines: a slow example there is load, not
# a bug, so Hypothesis's per-example deadline is off.
settings.register_profile("gateway", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gateway")
