"""The dashboard in a real browser: Playwright driving Debian's Chromium over real HTTPS.

Chromium trusts the gateway's local CA through an NSS database in a temporary HOME (as
``pygateway trust`` would set up), never by ignoring certificate errors.  The page must show
the upstreams, a request counter that moves after traffic, and an upstream that is stopped
turning DOWN by itself (the page polls; nobody reloads it).  A screenshot is saved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from e2e.harness import free_port
from e2e.test_admin_e2e import Admin, admin_stack, pygateway

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_DIR = Path(os.environ.get("DASHBOARD_SCREENSHOT_DIR", ""))


def nss_home(home: Path, ca_pem: Path) -> Path:
    """A HOME whose Chromium NSS database trusts ``ca_pem`` for websites."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-A", "-d", f"sql:{db}", "-n", "pygateway-test", "-t", "C,,", "-i", ca_pem],
        check=True,
    )
    return home


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[Browser, Path]]:
    assert Path(CHROMIUM).exists(), "make test installs chromium (.ci/install-tls-tools)"
    assert shutil.which("certutil"), "make test installs libnss3-tools (.ci/install-tls-tools)"
    home = tmp_path / "home"
    home.mkdir()
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = p.chromium.launch(
            executable_path=CHROMIUM, args=args, env={**os.environ, "HOME": str(home)}
        )
        try:
            yield launched, home
        finally:
            launched.close()


def total_requests(page: Page) -> int:
    return int(page.locator("#total-requests").inner_text())


def test_dashboard_shows_traffic_and_a_stopped_upstream_going_down(
    tmp_path: Path, browser: tuple[Browser, Path]
) -> None:
    chromium, home = browser
    with admin_stack(tmp_path, 2) as (s, admin):
        # NSS reads the database when the browser starts a context; fill it before.
        nss_home(home, s.gateway.ca_pem)
        context = chromium.new_context()
        page = context.new_page()
        page.goto(f"https://localhost:{admin.port}/")  # fails on an untrusted certificate
        expect(page.locator("#status")).to_have_text("live")
        rows = page.locator("#upstreams tr.server")
        expect(rows).to_have_count(2)
        a_state = page.locator(f'tr.server[data-url="{s.upstreams["a"].url}"] .state')
        b_state = page.locator(f'tr.server[data-url="{s.upstreams["b"].url}"] .state')
        expect(a_state).to_have_text("UP")
        expect(b_state).to_have_text("UP")
        expect(page.locator("#certificates tr.certificate")).to_have_count(1)
        days = int(page.locator("#certificates .days-left").inner_text())
        assert 80 <= days <= 90

        before = total_requests(page)
        with s.gateway.client() as client:
            for _ in range(25):
                assert client.get("/echo").status_code == 200
        expect(page.locator("#total-requests")).not_to_have_text(str(before))
        page.wait_for_function(
            "n => Number(document.querySelector('#total-requests').textContent) >= n",
            arg=before + 25,
        )
        expect(page.locator('#codes [data-code="200"]')).to_contain_text("200:")
        expect(page.locator("#recent tbody tr").first).to_contain_text("/echo")

        s.upstreams["b"].process.stop()
        expect(b_state).to_have_text("DOWN", timeout=15_000)  # no reload: the page polls
        expect(a_state).to_have_text("UP")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if SCREENSHOT_DIR != Path(""):
            SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, SCREENSHOT_DIR / "dashboard.png")
        context.close()


def test_dashboard_needs_the_admin_credentials(
    tmp_path: Path, browser: tuple[Browser, Path]
) -> None:
    """With [admin] htpasswd the browser is asked for them; with them the page is live."""
    import bcrypt

    chromium, home = browser
    htpasswd = tmp_path / "admin.htpasswd"
    htpasswd.write_text(f"ops:{bcrypt.hashpw(b'pw-123', bcrypt.gensalt(4)).decode()}\n")
    port = free_port()
    from e2e.harness import stack
    from e2e.test_admin_e2e import config_for

    base = config_for(port, tmp_path / "access.log")

    def build(upstreams: dict) -> object:  # type: ignore[type-arg]
        cfg = base(upstreams)
        cfg.admin["htpasswd"] = str(htpasswd)
        return cfg

    with stack(tmp_path / "gw", ["a", "b"], build) as s:  # type: ignore[arg-type]
        nss_home(home, s.gateway.ca_pem)
        anonymous = chromium.new_context().new_page()
        # Chromium with no credentials to offer gives up on the 401 challenge.
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            anonymous.goto(f"https://localhost:{port}/")
        anonymous.context.close()
        context = chromium.new_context(http_credentials={"username": "ops", "password": "pw-123"})
        page = context.new_page()
        page.goto(f"https://localhost:{port}/")
        expect(page.locator("#status")).to_have_text("live")
        expect(page.locator("#upstreams tr.server")).to_have_count(2)
        context.close()
        with Admin(s, port) as admin:
            assert admin.client.get("/api/upstreams").status_code == 401
        # pygateway reload authenticates as an htpasswd user.
        config = str(s.gateway.config_path)
        denied = pygateway("reload", "--config", config, "--user", "ops", env=password_env("wrong"))
        assert denied.returncode == 1 and "401" in denied.stderr
        allowed = pygateway(
            "reload", "--config", config, "--user", "ops", env=password_env("pw-123")
        )
        assert allowed.returncode == 0, allowed.stderr


def password_env(password: str) -> dict[str, str]:
    return {**os.environ, "PYGATEWAY_ADMIN_PASSWORD": password}
