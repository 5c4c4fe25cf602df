"""Who may talk to a server and which files may be trusted (torch-free: the edge imports it).

* TLS: an https server's certificate checked against the system's authorities or a given one.
* Bearer tokens: one secret shared by the server and its edges, read from a file (``--token-file``) or
  the environment (``ASKEXPERT_TOKEN``), never from the command line (it would show in ``ps``).
* Binding beyond loopback: refused without a token unless the user says ``--insecure``.
* Paths named inside artifacts (a checkpoint's ``weights_file``, a bundle's file list) must stay
  inside the artifact's directory: a crafted ``../../`` cannot make askexpert read elsewhere.
* A published system id (the sha256 of a bundle's ``system.json``, which lists every file's sha256)
  pins a bundle: ``--expect-system-id`` refuses any other, so tampering is caught, not only damage.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from pathlib import Path

from askexpert.errors import CheckpointError, ConfigError

TOKEN_ENV = "ASKEXPERT_TOKEN"


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificate checks against the system's authorities, or against ``ca_file`` (a self-signed server)."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def read_token(token_file: Path | None) -> str | None:
    """The bearer token from ``token_file`` (its first line), else ``$ASKEXPERT_TOKEN``, else None."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip().splitlines()
        except OSError as err:
            raise ConfigError(f"cannot read the token file {token_file}: {err.strerror}",
                              fix="point --token-file at a readable file holding the token") from err
        if not token or not token[0].strip():
            raise ConfigError(f"the token file {token_file} is empty",
                              fix="write a token into it, e.g.: python -c 'import secrets; print(secrets."
                                  f"token_urlsafe(32))' > {token_file}")
        return token[0].strip()
    return os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only localhost is known to stay on this machine
        return False


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve beyond loopback without a token (unless ``insecure``)."""
    if not is_loopback(host) and token is None and not insecure:
        raise ConfigError(f"--host {host} would let anyone who reaches this machine use the experts (and /docs): "
                          "there is no token", fix="give one with --token-file FILE (or ASKEXPERT_TOKEN), and the "
                          "same to the edge; or say --insecure on a trusted network")


def confined(root: Path, relative: str, what: str) -> Path:
    """``root / relative``, refused when it leaves ``root`` (absolute, ``..`` or a link pointing out)."""
    root = Path(root)
    target = root / relative
    if Path(relative).is_absolute() or not target.resolve().is_relative_to(root.resolve()):
        raise CheckpointError(f"{what} names {relative!r}, outside {root}",
                              fix="artifacts may only name files inside their own directory: rebuild or re-download "
                                  "it from a trusted source")
    return target


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def refuse_pin_without_bundle(expected: str | None, source, what: str, use: str) -> None:
    """Refuse ``--expect-system-id`` on ``source``, a run directory (``what``): only a bundle has an id to pin;
    ``use`` is what to do with the bundle instead (run, serve)."""
    if expected is not None:
        raise ConfigError(f"--expect-system-id pins a bundle, and {source} is {what}",
                          fix=f"{use} the bundle (askexpert build-system), or leave out --expect-system-id")


def check_system_id(actual: str, expected: str | None, where: str) -> None:
    """Refuse a bundle whose ``system.json`` sha256 is not the published one."""
    if expected is None:
        return
    expected = expected.strip().lower()
    if not _SHA256.match(expected):
        raise ConfigError(f"--expect-system-id must be the 64 hex digits of a sha256, got {expected[:70]!r}",
                          fix="copy the id askexpert build-system printed (or sha256sum BUNDLE/system.json)")
    if actual != expected:
        raise CheckpointError(f"{where} is not the expected system: its system.json has sha256 {actual}, the "
                              f"published one is {expected}", fix="get the bundle again from its publisher; do not "
                              "serve or run a bundle that differs from the published id")
