"""Settings shared by every test directory."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# pytester runs the pygateway plugin's tests as a user's project would (tests/plugin); pytest
# accepts pytest_plugins only in the top-level conftest.
pytest_plugins = ["pytester"]

# The suite runs next to real servers on small CI machines: a slow example there is load, not
# a bug, so Hypothesis's per-example deadline is off.
settings.register_profile("gateway", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gateway")
