"""Fixtures for the pygateway plugin's tests (see ``user_project``)."""

from __future__ import annotations

import pytest
from user_project import UserProject


@pytest.fixture
def project(pytester: pytest.Pytester) -> UserProject:
    return UserProject(pytester)
