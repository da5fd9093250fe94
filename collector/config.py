"""The collector's TOML config (`capfan collect -c collector.toml`): schema, key files and checks.

Every problem is a ConfigError naming the key (`security.authorized_keys`) and the fix. Loading
also reads the key files, so `capfan collect --check` catches a missing or unreadable key.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket

from capfan import config as C
from capfan.errors import CapfanError, ConfigError

DEFAULT_CONFIG = "/etc/capfan/collector.toml"
DEFAULT_LISTEN = "tcp://127.0.0.1:5557"
DEFAULT_API = "127.0.0.1:8477"
MAX_MESSAGE_LIMIT = 1 << 30
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_Z85_RE = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


def _name(value, key):
    if not _NAME_RE.match(value):
        raise ConfigError(key, f"{value!r} is not a usable name: 1-64 letters, digits, '_', '.', '@' or '-'")
    return value


def _port(text, key, value, star_ok):
    if star_ok and text == "*":
        return
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(key, f"{value!r}: port must be 0 to 65535{' or *' if star_ok else ''}")


def _zmq_endpoint(value, key):
    """Check: tcp://HOST:PORT (HOST an address, a name or *) or ipc://PATH."""
    if value.startswith("ipc://") and len(value) > 6:
        return value
    m = re.match(r"^tcp://(\[[^\]]+\]|[^:/\[\]]+):([^:/]+)$", value)
    if not m:
        raise ConfigError(key, f"expected an endpoint like \"tcp://127.0.0.1:5557\", \"tcp://*:5557\" or "
                               f"\"ipc:///run/capfan/collector.sock\", got {value!r}")
    _port(m.group(2), key, value, star_ok=True)
    return value


def _http_listen(value, key):
    """Check: HOST:PORT (IPv6 as [::1]:PORT)."""
    m = re.match(r"^(\[[^\]]+\]|[^:\[\]]+):(\d+)$", value)
    if not m:
        raise ConfigError(key, f"expected HOST:PORT like \"127.0.0.1:8477\", got {value!r}")
    _port(m.group(2), key, value, star_ok=False)
    return value


def _max_bytes(value, key):
    n = C.size(value, key)
    if not 4096 <= n <= MAX_MESSAGE_LIMIT:
        raise ConfigError(key, f"must be 4K to 1G, not {value!r}")
    return n


COLLECTOR = {
    "name": C.Field(str, None, "collector name (status line, logs); default: host name", _name),
    "listen": C.Field(str, DEFAULT_LISTEN, "ZeroMQ endpoint agents connect to; loopback by default: "
                      "bind \"tcp://*:5557\" (with CURVE) to accept remote agents", _zmq_endpoint),
    "store": C.Field(str, "/var/lib/capfan/collector.duckdb", "the embedded store's file"),
    "merge_window": C.Field((int, float), 60.0, "seconds within which records of one flow from several "
                            "sensors are merged", C.non_negative),
    "max_message_bytes": C.Field((int, str), "64M", "larger messages are rejected and counted", _max_bytes),
    "status_interval": C.Field((int, float), 10.0, "seconds between status lines on stderr (0: none)",
                               C.non_negative),
}

SECURITY = {
    "mode": C.Field(str, "curve", "curve (authenticated, encrypted) or plain (anyone who can connect; "
                    "must be chosen explicitly)", C.one_of("curve", "plain")),
    "server_key": C.Field(str, None, "this collector's secret key file (capfan keys gen NAME: NAME.key_secret)"),
    "authorized_keys": C.Field((str, list), None, "agents allowed to send: a directory of their NAME.key files, "
                               "or a list of .key files and Z85 public keys"),
}

API = {
    "enabled": C.Field(bool, True, "serve the HTTP JSON API"),
    "listen": C.Field(str, DEFAULT_API, "HOST:PORT; loopback by default (the flows describe your network)",
                      _http_listen),
}

SCHEMA = {
    "collector": C.Table(COLLECTOR),
    "security": C.Table(SECURITY),
    "api": C.Table(API),
}


def load(path: str) -> dict:
    """The checked config of a collector TOML file, key files read (see `resolve`)."""
    return resolve(C.load_file(path), os.path.dirname(os.path.abspath(path)))


def resolve(data: dict, base: str = ".") -> dict:
    """Validate a parsed config; relative paths are taken from `base`; in curve mode the keys are
    loaded into security.public_key / secret_key / authorized (a set of Z85 public keys)."""
    cfg = C.validate(data, SCHEMA)
    col, sec = cfg["collector"], cfg["security"]
    col["name"] = col["name"] or _name(socket.gethostname().split(".")[0] or "collector", "collector.name")
    col["store"] = C.path_relative_to(base)(col["store"], "collector.store")
    sec["public_key"] = sec["secret_key"] = None
    sec["authorized"] = set()
    if sec["mode"] == "plain":
        for k in ("server_key", "authorized_keys"):
            if sec[k] is not None:
                raise ConfigError(f"security.{k}", "is only used with mode = \"curve\"; remove it or set "
                                                   "security.mode = \"curve\"")
        return cfg
    _load_curve(sec, base)
    return cfg


def _load_curve(sec: dict, base: str) -> None:
    from capfan import keys
    rel = C.path_relative_to(base)
    if sec["server_key"] is None:
        raise ConfigError("security.server_key", "curve mode needs this collector's secret key file: make one "
                          "with `capfan keys gen NAME` and set server_key = \"NAME.key_secret\" (or set "
                          "security.mode = \"plain\" to run without authentication)")
    sec["server_key"] = rel(sec["server_key"], "security.server_key")
    try:
        pair = keys.load_keypair(sec["server_key"])
        public, secret = pair["public"], pair["secret"]
    except (CapfanError, OSError, ValueError) as e:
        raise ConfigError("security.server_key", str(e)) from None
    sec["public_key"], sec["secret_key"] = _text(public), _text(secret)
    items = sec["authorized_keys"]
    if items is None:
        raise ConfigError("security.authorized_keys", "curve mode needs the public keys of the agents allowed to "
                          "send: a directory of their NAME.key files or a list of files / Z85 keys")
    if isinstance(items, str):
        items = [items]
    authorized = set()
    for i, item in enumerate(items):
        key = f"security.authorized_keys[{i}]" if isinstance(sec["authorized_keys"], list) \
            else "security.authorized_keys"
        if not isinstance(item, str) or not item:
            raise ConfigError(key, f"expected a key file, a directory or a Z85 public key, got {item!r}")
        path = rel(item, key)
        if _Z85_RE.match(item) and not os.path.exists(path):
            authorized.add(item)
            continue
        try:
            found = keys.load_public_keys(path if os.path.isdir(path) else [path])
        except (CapfanError, OSError, ValueError) as e:
            raise ConfigError(key, str(e)) from None
        if os.path.isdir(path) and not found:
            raise ConfigError(key, f"directory {path} holds no *.key public key files")
        authorized |= {_text(k) for k in found}
    if not authorized:
        raise ConfigError("security.authorized_keys", "lists no agent public key; curve mode would accept nobody")
    sec["authorized"] = authorized


def _text(key) -> str:
    return key.decode() if isinstance(key, bytes) else key


def api_url(listen: str) -> str:
    """http:// URL of an [api] listen address (a wildcard bind is reached through loopback)."""
    host, port = listen.rsplit(":", 1)
    bare = host.strip("[]")
    try:
        if ipaddress.ip_address(bare).is_unspecified:
            host = "[::1]" if ":" in bare else "127.0.0.1"
    except ValueError:
        pass
    return f"http://{host}:{port}"
