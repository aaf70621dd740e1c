"""``env_file``: ``KEY=value`` lines, as docker compose's ``env_file`` and python-dotenv read them.

Blank lines and ``#`` comments are skipped; ``export KEY=value`` is allowed; a value wrapped in
matching single or double quotes loses them.  Values may be secrets, so no error message here
ever contains one: problems name the file, the line number and the key only.
"""

from __future__ import annotations

import re
from pathlib import Path

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(Exception):
    """The file cannot be read or has a malformed line; the message never shows a value."""


def parse_env(text: str, source: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not ENV_NAME.fullmatch(key):
            shown = f" ({key!r})" if ENV_NAME.fullmatch(key) else ""
            raise EnvFileError(
                f"{source}: line {number}{shown}: expected KEY=value with KEY made of "
                "letters, digits and '_' (not starting with a digit)"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def read_env_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnvFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise EnvFileError(f"{path}: cannot read: {reason}") from None
    return parse_env(text, str(path))
