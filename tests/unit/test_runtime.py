"""The runtime's pure parts: env files, restart back-off, the output prefixer, and how the
stack turns a ``[services.NAME]`` into a command line and an environment."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from gateway.config import ServiceSettings
from gateway.runtime.children import OutputPrefixer
from gateway.runtime.envfile import EnvFileError, parse_env, read_env_file
from gateway.runtime.supervisor import describe_exit, probe_host, restart_delay
from gateway.stack import service_argv, service_env


def test_env_file_lines() -> None:
    text = (
        "# a comment\n\nA=1\nexport B = two words \nC='quoted # not a comment'\n"
        'D="x"\nE=\nF=a=b\n'
    )
    assert parse_env(text, "f.env") == {
        "A": "1",
        "B": "two words",
        "C": "quoted # not a comment",
        "D": "x",
        "E": "",
        "F": "a=b",
    }


@pytest.mark.parametrize("line", ["no equals sign secret", "1A=secret", "BAD-NAME=secret"])
def test_env_file_errors_name_the_line_never_the_value(line: str) -> None:
    with pytest.raises(EnvFileError) as info:
        parse_env(f"OK=1\n{line}\n", "f.env")
    assert str(info.value).startswith("f.env: line 2")
    assert "secret" not in str(info.value)


def test_read_env_file_errors(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match="no such file"):
        read_env_file(tmp_path / "missing.env")
    (tmp_path / "binary.env").write_bytes(b"\xff\xfe")
    with pytest.raises(EnvFileError, match="not UTF-8"):
        read_env_file(tmp_path / "binary.env")


def test_restart_delay_backs_off_and_caps() -> None:
    assert [restart_delay(n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == 30.0


def test_probe_host_and_exit_descriptions() -> None:
    assert probe_host("0.0.0.0") == "127.0.0.1" and probe_host("::") == "::1"
    assert probe_host("10.1.2.3") == "10.1.2.3"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"


def test_output_prefixer_aligns_and_colours_only_when_asked() -> None:
    plain = io.StringIO()
    output = OutputPrefixer(plain, colour=False)
    output.reserve(["backend", "products-1"])
    output.write("backend", "hello")
    output.write("products-1", "world")
    assert plain.getvalue() == "backend    | hello\nproducts-1 | world\n"

    coloured = io.StringIO()
    output = OutputPrefixer(coloured, colour=True)
    output.write("a", "x")
    output.write("b", "y")
    output.write("a", "z")
    lines = coloured.getvalue().splitlines()
    assert lines[0].startswith("\033[36ma |\033[0m") and lines[1].startswith("\033[33mb |")
    assert lines[2].startswith("\033[36ma |")  # one colour per name
    assert OutputPrefixer(io.StringIO()).colour is False  # not a terminal


def test_service_command_and_environment(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("DB=from-file\nLEVEL=debug\n")
    service = ServiceSettings(
        name="app",
        command=("python", "-m", "app", "--port={port}", "{port}"),
        base_port=9001,
        env={"LEVEL": "info"},
        env_file=tmp_path / "app.env",
    )
    assert service_argv(service, 9002) == [sys.executable, "-m", "app", "--port=9002", "9002"]
    env = service_env(service, 9002, base={"PATH": "/bin", "DB": "from-environment"})
    # our environment, then the env_file, then env (docker compose's order), and PORT
    assert env == {"PATH": "/bin", "DB": "from-file", "LEVEL": "info", "PORT": "9002"}
    other = ServiceSettings(name="x", command=("/usr/bin/env",), base_port=1)
    assert service_argv(other, 1) == ["/usr/bin/env"]
    (tmp_path / "app.env").unlink()
    with pytest.raises(OSError, match="no such file"):
        service_env(service, 9002, base={})


def test_a_backend_roll_waits_for_the_gateways_health_period(tmp_path: Path) -> None:
    from backend.supervisor import health_period
    from gateway.config import parse_settings

    data = {
        "backend": {"base_port": 8001, "workers": 2},
        "upstreams": {
            "api": {"servers": ["http://127.0.0.1:8002"], "health_interval": 3.0},
            "other": {"servers": ["http://127.0.0.1:9000"], "health_interval": 9.0},
        },
    }
    assert health_period(parse_settings(data, tmp_path / "c.toml")) == 4.0  # 3 + timeout 1
    del data["upstreams"]["api"]
    assert health_period(parse_settings(data, tmp_path / "c.toml")) == 0.0
