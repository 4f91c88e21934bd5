"""Device key files and the server's roster of accepted public keys.

A device's identity is an X25519 private key in a file of its own (PKCS#8 PEM, mode 0600,
created on first use); the server accepts a device only if the public key it proves at connection
time (:mod:`sim.aio.frames`) is the one its roster lists for that device id.  The roster is a text
file, one ``DEVICE PUBLIC_KEY_HEX`` line per device (``#`` comments), written by hand or by
``crowdlearn join --enrol``.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> key = load_or_create_key(os.path.join(d, "dev0.key"))
>>> oct(os.stat(os.path.join(d, "dev0.key")).st_mode & 0o777)
'0o600'
>>> enrol(os.path.join(d, "roster.txt"), 0, key)
>>> read_roster(os.path.join(d, "roster.txt")) == {0: public_hex(key)}
True
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sim.aio.frames import public_bytes

__all__ = ["KeyFileError", "load_or_create_key", "public_hex", "read_roster", "enrol"]


class KeyFileError(ValueError):
    """A key or roster file is missing, unreadable or not in the expected format."""


def public_hex(key: X25519PrivateKey) -> str:
    """The X25519 public key of ``key`` as 64 hex digits (a roster line's second field)."""
    return public_bytes(key).hex()


def load_or_create_key(path: str | os.PathLike) -> X25519PrivateKey:
    """The X25519 private key in ``path``; a fresh one written there (mode 0600) if the file
    does not exist.  A file that exists and is not such a key is never overwritten."""
    p = Path(path)
    if p.is_dir():
        raise KeyFileError(f"key file {str(p)!r} is a folder; name a file (created if absent)")
    if not p.exists():
        if not p.parent.is_dir():
            raise KeyFileError(f"key file {str(p)!r}: folder {str(p.parent)!r} does not exist")
        key = X25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # never over a file
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return key
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"key file {str(p)!r} cannot be read ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {str(p)!r} is not an unencrypted PEM private key ({exc}); "
                           "it was left as it is: name another path for the device's key") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"key file {str(p)!r} holds a {type(key).__name__}, not an X25519 "
                           "key; it was left as it is: name another path for the device's key")
    return key


def _parse_device(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def read_roster(path: str | os.PathLike) -> dict:
    """Device id → public key hex, from a roster file (``DEVICE HEX`` lines)."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise KeyFileError(f"roster {str(p)!r} does not exist: enrol each device with "
                           "crowdlearn join --key KEY --enrol ROSTER --device I") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"roster {str(p)!r} cannot be read ({exc})") from None
    out: dict = {}
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            ok = len(parts) == 2 and len(bytes.fromhex(parts[1])) == 32
        except ValueError:
            ok = False
        if not ok:
            raise KeyFileError(f"roster {str(p)!r} line {n}: {line!r} is not "
                               "'DEVICE PUBLIC_KEY_HEX' (64 hex digits)")
        dev = _parse_device(parts[0])
        if dev in out and out[dev] != parts[1].lower():
            raise KeyFileError(f"roster {str(p)!r} line {n}: device {dev!r} listed twice with "
                               "different keys")
        out[dev] = parts[1].lower()
    return out


def enrol(path: str | os.PathLike, device, key: X25519PrivateKey) -> None:
    """Add ``device``'s public key to the roster at ``path`` (created if absent); an entry for
    ``device`` with another key is an error (remove that line first)."""
    p = Path(path)
    have = read_roster(p) if p.exists() else {}
    pub = public_hex(key)
    if device in have:
        if have[device] != pub:
            raise KeyFileError(f"roster {str(p)!r} already lists device {device!r} with another "
                               "key; remove that line to enrol this key")
        return
    if not p.parent.is_dir():
        raise KeyFileError(f"roster {str(p)!r}: folder {str(p.parent)!r} does not exist")
    with open(p, "a") as f:
        f.write(f"{device} {pub}\n")
