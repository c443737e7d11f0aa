"""Where the server's URL and the token come from: arguments, then the environment (``CYTO_URL``,
``CYTO_TOKEN``), then the configuration file ``cyto login`` writes.

The file (``$CYTO_CONFIG``, else ``$XDG_CONFIG_HOME/cyto/config.toml``, else
``~/.config/cyto/config.toml``) holds a token, a password in all but name: it is written with
mode 0600 in a 0700 folder, and refused when anyone but its owner may read or write it, as ssh
refuses a private key others can read.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cytoclient.errors import ConfigurationError

ENV_URL = "CYTO_URL"
ENV_TOKEN = "CYTO_TOKEN"
ENV_CONFIG = "CYTO_CONFIG"


class InsecureConfigError(ConfigurationError):
    """The configuration file may be read or written by others than its owner."""


@dataclass(frozen=True)
class Settings:
    """The server to talk to and the token to do it with; ``source`` says where they came from."""

    url: str
    token: str
    source: str


def config_path() -> Path:
    """The configuration file's path (it need not exist)."""
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "cyto" / "config.toml"


def _check_private(path: Path, info: os.stat_result) -> None:
    if sys.platform == "win32":
        return  # no POSIX modes there; the user profile's ACL protects it
    if info.st_mode & 0o077:
        raise InsecureConfigError(
            f"{path} may be read by others (mode {stat.S_IMODE(info.st_mode):04o}) and holds an API token: "
            f"refusing to use it. Run: chmod 600 {path} (and revoke the token if others could read it)"
        )
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise InsecureConfigError(f"{path} belongs to another user (uid {info.st_uid}): refusing to use it")


def config_read(path: Path | None = None) -> dict[str, str]:
    """The file's ``url`` and ``token`` (an empty dict when there is no file).

    Raises :class:`InsecureConfigError` when group or others have any permission on it, and
    :class:`ConfigurationError` when it is not valid TOML.
    """
    path = path or config_path()
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    _check_private(path, info)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
    return {key: str(data[key]) for key in ("url", "token") if isinstance(data.get(key), str)}


def config_write(url: str, token: str, path: Path | None = None) -> Path:
    """Write ``url`` and ``token`` to the file, readable by its owner only (0600, folder 0700).

    The file is created with those permissions (never briefly readable by others) and replaces
    the old one in one rename.
    """
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = (
        "# cyto (cytoclient) settings, written by `cyto login`. Keep private: it holds an API token.\n"
        f"url = {json.dumps(url)}\n"
        f"token = {json.dumps(token)}\n"
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def settings_resolve(url: str | None = None, token: str | None = None, *, path: Path | None = None) -> Settings:
    """The URL and token to use: the arguments, else ``CYTO_URL``/``CYTO_TOKEN``, else the file.

    The file is read only when something is still missing, so a script that sets both variables
    never depends on it. Raises :class:`ConfigurationError` when either stays unknown.
    """
    sources: list[str] = []
    if url or token:
        sources.append("arguments")
    env_url, env_token = os.environ.get(ENV_URL) or None, os.environ.get(ENV_TOKEN) or None
    if (not url and env_url) or (not token and env_token):
        sources.append("environment")
    url, token = url or env_url, token or env_token
    if not (url and token):
        file_path = path or config_path()
        stored = config_read(file_path)
        if stored and ((not url and stored.get("url")) or (not token and stored.get("token"))):
            sources.append(str(file_path))
        url, token = url or stored.get("url"), token or stored.get("token")
    if not url:
        raise ConfigurationError(f"no server URL: set {ENV_URL}, pass --url, or run `cyto login`")
    if not token:
        raise ConfigurationError(f"no API token: set {ENV_TOKEN}, or run `cyto login`")
    return Settings(url=url, token=token, source=" + ".join(sources))
