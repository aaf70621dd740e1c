"""``.ci/pick-python``: the interpreter ``make install`` builds ``.venv`` on.

The distribution's CPython (PGO and LTO) when it is 3.11+ and can create virtualenvs, else
``python3`` from PATH.  ``PICK_PYTHON_SYSTEM`` stands in for ``/usr/bin/python3``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "pick-python"


def pick(system: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An empty PATH but for the basics: apt-get is not found, so nothing is installed.
    env = {"PATH": "/usr/bin:/bin", "PICK_PYTHON_SYSTEM": system, "HOME": str(tmp_path)}
    if os.geteuid() == 0:
        env["PATH"] = str(tmp_path)  # no apt-get for root either
        for tool in ("bash", "id", "env"):
            (tmp_path / tool).symlink_to(f"/usr/bin/{tool}")
    return subprocess.run(
        ["/usr/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )


def fake_python(tmp_path: Path, version: tuple[int, int], has_venv: bool) -> str:
    """A stand-in interpreter that answers the script's two checks."""
    script = tmp_path / f"python{version[0]}.{version[1]}"
    old = "1" if version < (3, 11) else "0"
    venv = "0" if has_venv else "1"
    script.write_text(
        "#!/usr/bin/bash\n"
        'case "$2" in\n'
        f"  *ensurepip*) [ {old} = 0 ] && exit {venv}; exit 1 ;;\n"
        f"  *) exit {old} ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return str(script)


def test_a_recent_system_python_that_makes_virtualenvs_is_picked(tmp_path: Path) -> None:
    done = pick(sys.executable, tmp_path)  # this interpreter: 3.11+, with venv and ensurepip
    assert done.returncode == 0
    assert done.stdout.strip() == sys.executable


def test_no_system_python_falls_back_to_python3(tmp_path: Path) -> None:
    done = pick(str(tmp_path / "missing"), tmp_path)
    assert (done.returncode, done.stdout.strip()) == (0, "python3")


def test_an_old_system_python_is_not_picked(tmp_path: Path) -> None:
    done = pick(fake_python(tmp_path, (3, 9), has_venv=True), tmp_path)
    assert done.stdout.strip() == "python3"


def test_a_system_python_without_venv_is_not_picked_and_says_why(tmp_path: Path) -> None:
    system = fake_python(tmp_path, (3, 12), has_venv=False)
    done = pick(system, tmp_path)
    assert done.stdout.strip() == "python3"
    assert "cannot create virtualenvs (python3-venv)" in done.stderr


def test_a_recent_fake_with_venv_is_picked(tmp_path: Path) -> None:
    system = fake_python(tmp_path, (3, 13), has_venv=True)
    assert pick(system, tmp_path).stdout.strip() == system
