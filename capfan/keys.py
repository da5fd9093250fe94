"""CURVE key pairs for agent <-> collector encryption and authentication, stored in the ZeroMQ
certificate text format (`NAME.key`: public only, safe to copy to collectors; `NAME.key_secret`:
public + secret, mode 0600), readable by zmq.auth.load_certificate as well."""
from __future__ import annotations

import datetime
import os
import re
import struct

import zmq
from zmq.utils import z85

from capfan.errors import CapfanError

_Z85_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
_NAME_OK = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_LINE = re.compile(r'^\s+([A-Za-z0-9_.-]+)\s*=\s*"?([^"]*)"?\s*$')

_BANNER_PUBLIC = """#   ****  Generated on {when} by capfan keys gen  ****
#   ZeroMQ CURVE Public Certificate
#   Copy it to the collectors that should accept {name}; verify its contents after the copy.

"""
_BANNER_SECRET = """#   ****  Generated on {when} by capfan keys gen  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT give this file to anyone nor change its permissions: it proves {name}'s identity.

"""


class KeyFileError(CapfanError):
    """A key file is missing, unreadable, malformed, or would be overwritten."""


def check_key(key, what: str) -> str:
    """`key` as a valid 40-character Z85 CURVE key string; KeyFileError naming `what` if it is not."""
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, str) or len(key) != 40 or not set(key) <= _Z85_CHARS:
        raise KeyFileError(f"{what} is not a CURVE key (40 Z85 characters, as `capfan keys gen` writes)")
    try:
        if len(z85.decode(key)) != 32:
            raise ValueError
    except (ValueError, KeyError, TypeError, struct.error):
        raise KeyFileError(f"{what} is not a valid Z85 CURVE key") from None
    return key


def _cert_text(banner: str, name: str, public: str, secret: str | None) -> str:
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    lines = [banner.format(when=when, name=name), "metadata\n", f'    name = "{name}"\n', "curve\n",
             f'    public-key = "{public}"\n']
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"\n')
    return "".join(lines)


def _create(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # O_EXCL: never overwrite
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def generate(name: str, directory: str = ".") -> tuple[str, str]:
    """Write DIR/NAME.key and DIR/NAME.key_secret (0600) for a new key pair; (public path, secret path)."""
    if not _NAME_OK.match(name):
        raise KeyFileError(f"key name {name!r} must be 1-128 letters, digits, '_', '.', '@' or '-'")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise KeyFileError(f"cannot create key directory {directory!r}: {e.strerror}") from None
    pub_path = os.path.join(directory, f"{name}.key")
    sec_path = os.path.join(directory, f"{name}.key_secret")
    for p in (pub_path, sec_path):
        if os.path.lexists(p):
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key (remove it first, or pick "
                               "another name)")
    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    try:
        _create(sec_path, _cert_text(_BANNER_SECRET, name, public, secret), 0o600)
    except FileExistsError:
        raise KeyFileError(f"{sec_path} already exists; refusing to overwrite a key") from None
    except OSError as e:
        raise KeyFileError(f"cannot write {sec_path}: {e.strerror}") from None
    try:
        _create(pub_path, _cert_text(_BANNER_PUBLIC, name, public, None), 0o644)
    except OSError as e:
        os.unlink(sec_path)  # no half pair left behind
        if isinstance(e, FileExistsError):
            raise KeyFileError(f"{pub_path} already exists; refusing to overwrite a key") from None
        raise KeyFileError(f"cannot write {pub_path}: {e.strerror}") from None
    return pub_path, sec_path


def _parse(path: str) -> dict[str, str]:
    """The curve section of a certificate file: {"public-key": ..., ["secret-key": ...]}."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist (make one with `capfan keys gen NAME`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read key file {path}: {getattr(e, 'strerror', None) or e}") from None
    section, curve = None, {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
            continue
        m = _LINE.match(line)
        if m is None:
            raise KeyFileError(f"key file {path}: malformed line {line.strip()!r} (expected name = \"value\")")
        if section == "curve":
            curve[m.group(1)] = m.group(2)
    if "public-key" not in curve:
        raise KeyFileError(f"key file {path} has no curve public-key; is it a ZeroMQ certificate?")
    curve["public-key"] = check_key(curve["public-key"], f"public-key in {path}")
    if "secret-key" in curve:
        curve["secret-key"] = check_key(curve["secret-key"], f"secret-key in {path}")
    return curve


def load_public(path: str) -> str:
    """The Z85 public key of a certificate file (NAME.key or NAME.key_secret)."""
    return _parse(os.fspath(path))["public-key"]


def load_keypair(path: str) -> dict:
    """{"public": ..., "secret": ...} from a NAME.key_secret file (the secret must match the public key)."""
    path = os.fspath(path)
    c = _parse(path)
    if "secret-key" not in c:
        hint = f" (use {path}_secret)" if path.endswith(".key") else ""
        raise KeyFileError(f"key file {path} holds no secret-key{hint}")
    if zmq.curve_public(c["secret-key"].encode()).decode() != c["public-key"]:
        raise KeyFileError(f"key file {path}: secret-key does not belong to public-key (file edited?)")
    return {"public": c["public-key"], "secret": c["secret-key"]}


def load_public_keys(dir_or_files) -> set[str]:
    """Public keys from a directory (every *.key in it), a file, or a list of those."""
    items = [dir_or_files] if isinstance(dir_or_files, (str, os.PathLike)) else list(dir_or_files)
    keys: set[str] = set()
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            names = sorted(n for n in os.listdir(item) if n.endswith(".key"))
            if not names:
                raise KeyFileError(f"no *.key files in {item}; copy the agents' public keys there")
            keys.update(load_public(os.path.join(item, n)) for n in names)
        else:
            keys.add(load_public(item))
    if not keys:
        raise KeyFileError("no public keys given")
    return keys
