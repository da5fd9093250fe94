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
    "engine": C.Field(str, "duckdb", "where flows are stored: \"duckdb\" (the embedded file `store`) or "
                      "\"clickhouse\" (a ClickHouse server or cluster, see [clickhouse])",
                      C.one_of("duckdb", "clickhouse")),
    "store": C.Field(str, "/var/lib/capfan/collector.duckdb", "the embedded store's file (engine = \"duckdb\"; "
                     "with clickhouse its directory holds the journal)"),
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

def _ch_name(value, key):
    """Check: a database or cluster name ClickHouse takes unquoted."""
    if value and not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", value):
        raise ConfigError(key, f"{value!r} is not a plain identifier: letters, digits and '_', not starting "
                               "with a digit")
    return value


def _tcp_port(value, key):
    if not 1 <= value <= 65535:
        raise ConfigError(key, f"must be 1 to 65535, not {value!r}")
    return value


def _days(value, key):
    if value < 0:
        raise ConfigError(key, f"must be 0 (keep forever) or more days, not {value!r}")
    return value


CLICKHOUSE = {
    "host": C.Field(str, "127.0.0.1", "ClickHouse server (native protocol) this collector writes"),
    "port": C.Field(int, 9000, "its native TCP port", _tcp_port),
    "database": C.Field(str, "capfan", "database of the capfan tables (created if missing)", _ch_name),
    "user": C.Field(str, "default", "ClickHouse user"),
    "password_file": C.Field(str, "", "file holding the user's password (empty: no password)"),
    "cluster": C.Field(str, "", "remote_servers cluster name: tables are Distributed over it and this "
                       "collector writes the *_local tables of its server (empty: one server)", _ch_name),
    "retention_days": C.Field(int, 0, "drop flows older than this many days (0: keep forever); TTL on "
                              "ClickHouse >= 19.6, else the collector drops old day partitions", _days),
    "collector_id": C.Field(str, "", "names this collector's loads (exactly-once bookkeeping); default: "
                            "[collector] name; unique per collector writing a server"),
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
    "clickhouse": C.Table(CLICKHOUSE),
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
    _resolve_clickhouse(cfg, base)
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


def _resolve_clickhouse(cfg: dict, base: str) -> None:
    """Fill [clickhouse] collector_id (default: the collector's name) and read password_file into password."""
    ch = cfg["clickhouse"]
    ch["collector_id"] = _name(ch["collector_id"], "clickhouse.collector_id") if ch["collector_id"] \
        else cfg["collector"]["name"]
    ch["password"] = ""
    if ch["password_file"]:
        ch["password_file"] = C.path_relative_to(base)(ch["password_file"], "clickhouse.password_file")
        try:
            with open(ch["password_file"], encoding="utf-8") as f:
                ch["password"] = f.read().strip()
        except OSError as e:
            raise ConfigError("clickhouse.password_file", f"cannot read {ch['password_file']}: "
                                                          f"{e.strerror or e}") from None


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
