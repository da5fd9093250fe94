"""The collector's HTTP JSON API (loopback by default), served from a daemon thread.

GET /api/top      top-N flows grouped by keys: by, group, start, end, limit + filters
GET /api/flows    merged flows matching filters: start, end, limit + filters
GET /api/totals   flows, packets, bytes: start, end + filters
GET /api/health   per host / source health from the store and the intake counters
GET /api/export   the matching flows as a file: format=csv|parquet, start, end + filters
Filters: src, dst (addresses), sport, dport, proto, vlan (integers), host (agent id).
Times: ns since the epoch, ISO-8601 (UTC unless it says otherwise), "now" or relative "-15m".
Bad parameters are 400 {"error": ...} naming the parameter; a failure is 500 without a traceback.
"""
from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse

log = logging.getLogger(__name__)

BY = ("bytes", "packets", "flows")
GROUP_KEYS = ("src", "dst", "sport", "dport", "proto", "vlan", "host")
FORMATS = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
MAX_LIMIT = 1_000_000
_INT_FILTERS = {"sport": 65535, "dport": 65535, "proto": 255, "vlan": 4095}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")


class BadParameter(ValueError):
    """A query parameter is missing or invalid: a 400 naming it."""

    def __init__(self, name: str, message: str):
        super().__init__(f"parameter '{name}': {message}")
        self.name = name


def parse_time(text: str, name: str = "time", now_ns: int | None = None) -> int:
    """ns since the epoch from ns digits, ISO-8601, 'now' or a relative '-15m' / '-2h' / '-1d'."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    text = text.strip()
    if text.isdigit():
        return int(text)
    if text == "now":
        return now_ns
    m = _RELATIVE.match(text)
    if m:
        return now_ns - int(float(m.group(1)) * _UNITS[m.group(2)] * 1_000_000_000)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise BadParameter(name, f"{text!r} is not a time: give ns since the epoch, ISO-8601 like "
                                 "2024-05-01T12:00:00Z, 'now' or relative like -15m, -2h, -1d") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _int(text: str, name: str, lo: int, hi: int) -> int:
    try:
        n = int(text)
    except ValueError:
        raise BadParameter(name, f"expected an integer, got {text!r}") from None
    if not lo <= n <= hi:
        raise BadParameter(name, f"must be {lo} to {hi}, not {n}")
    return n


class Query:
    """The parsed parameters of one request; `take()` each, then `done()` rejects leftovers."""

    def __init__(self, query: str):
        self._params: dict[str, str] = {}
        for name, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
            if len(values) > 1:
                raise BadParameter(name, "given more than once")
            self._params[name] = values[0]
        self._known: list[str] = []

    def take(self, name: str, default=None):
        """The raw text of `name` or `default`."""
        self._known.append(name)
        return self._params.get(name, default)

    def times(self) -> tuple[int | None, int | None]:
        """(start_ns, end_ns) from start / end."""
        now = time.time_ns()
        start, end = self.take("start"), self.take("end")
        start_ns = parse_time(start, "start", now) if start else None
        end_ns = parse_time(end, "end", now) if end else None
        if start_ns is not None and end_ns is not None and end_ns < start_ns:
            raise BadParameter("end", "is before start")
        return start_ns, end_ns

    def where(self) -> dict:
        """Filters as the store's `where` dict."""
        out = {}
        for name in ("src", "dst"):
            v = self.take(name)
            if v is not None:
                try:
                    out[name] = str(ipaddress.ip_address(v))
                except ValueError:
                    raise BadParameter(name, f"{v!r} is not an IPv4 or IPv6 address") from None
        for name, hi in _INT_FILTERS.items():
            v = self.take(name)
            if v is not None:
                out[name] = _int(v, name, 0, hi)
        v = self.take("host")
        if v is not None:
            if not re.match(r"^[A-Za-z0-9_.@-]{1,64}$", v):
                raise BadParameter("host", f"{v!r} is not an agent host id")
            out["host"] = v
        return out

    def limit(self, default: int) -> int:
        """limit, 1 to MAX_LIMIT."""
        v = self.take("limit")
        return default if v is None else _int(v, "limit", 1, MAX_LIMIT)

    def done(self) -> None:
        """BadParameter for a parameter this endpoint does not know (a typo would silently widen a query)."""
        for name in self._params:
            if name not in self._known:
                raise BadParameter(name, f"unknown here; known: {', '.join(self._known)}")


def _json_default(v):
    if hasattr(v, "item"):    # numpy scalars
        return v.item()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (set, tuple)):
        return list(v)
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return str(v)


class Api:
    """The HTTP API of one store (and optionally an intake for its counters)."""

    def __init__(self, store, listen: str = "127.0.0.1:8477", intake=None, info: dict | None = None,
                 loader=None):
        self.store = store
        self.intake = intake
        self.loader = loader
        self.info = info or {}
        host, port = listen.rsplit(":", 1)
        self._addr = (host.strip("[]"), int(port))
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 resolved)."""
        return self._server.server_address[:2]

    @property
    def url(self) -> str:
        """http:// base URL of the bound server."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> str:
        """Bind and serve from a daemon thread; returns the URL."""
        api = self

        class Handler(_Handler):
            pass
        Handler.api = api
        server_cls = _Server6 if ":" in self._addr[0] else _Server
        try:
            self._server = server_cls(self._addr, Handler)
        except OSError as e:
            raise OSError(f"cannot serve the API on {self._addr[0]}:{self._addr[1]}: {e.strerror or e}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="capfan-api", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ endpoints: (status, body)

    def top(self, q: Query):
        """GET /api/top."""
        by = q.take("by", "bytes")
        if by not in BY:
            raise BadParameter("by", f"must be one of {', '.join(BY)}, not {by!r}")
        group = [g.strip() for g in q.take("group", "src,dst").split(",") if g.strip()]
        if not group:
            raise BadParameter("group", f"give one or more of {', '.join(GROUP_KEYS)}")
        for g in group:
            if g not in GROUP_KEYS:
                raise BadParameter("group", f"unknown key {g!r}; known: {', '.join(GROUP_KEYS)}")
        if len(set(group)) != len(group):
            raise BadParameter("group", "names a key twice")
        start, end = q.times()
        limit, where = q.limit(10), q.where()
        q.done()
        rows = self.store.top(by=by, group=group, start_ns=start, end_ns=end, limit=limit, where=where)
        return {"by": by, "group": group, "start_ns": start, "end_ns": end, "where": where, "rows": rows}

    def flows(self, q: Query):
        """GET /api/flows."""
        start, end = q.times()
        limit, where = q.limit(1000), q.where()
        q.done()
        rows = self.store.flows(where=where, start_ns=start, end_ns=end, limit=limit)
        return {"start_ns": start, "end_ns": end, "where": where, "limit": limit, "flows": rows}

    def totals(self, q: Query):
        """GET /api/totals."""
        start, end = q.times()
        where = q.where()
        q.done()
        out = dict(self.store.totals(start_ns=start, end_ns=end, where=where))
        out.update(start_ns=start, end_ns=end, where=where)
        return out

    def health(self, q: Query):
        """GET /api/health."""
        q.done()
        out = dict(self.info)
        out["now_ns"] = time.time_ns()
        out["store"] = self.store.health()
        if self.intake is not None:
            out["intake"] = self.intake.counters()
        if self.loader is not None:
            out["loader"] = self.loader.counters()
            out["journal"] = self.loader.journal.stats()
        return out


_ROUTES = {"/api/top": Api.top, "/api/flows": Api.flows, "/api/totals": Api.totals, "/api/health": Api.health}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    api: Api
    server_version = "capfan-collector"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body, default=_json_default).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            q = Query(url.query)
            if path == "/api/export":
                return self._export(q)
            route = _ROUTES.get(path)
            if route is None:
                return self._send(404, {"error": f"no endpoint {path}; known: "
                                                 f"{', '.join([*_ROUTES, '/api/export'])}"})
            self._send(200, route(self.api, q))
        except BadParameter as e:
            self._send(400, {"error": str(e), "parameter": e.name})
        except ValueError as e:  # the store refused a parameter combination
            self._send(400, {"error": str(e)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("API request %s failed", self.path)
            try:
                self._send(500, {"error": "internal error; see the collector's log"})
            except OSError:
                pass

    def do_HEAD(self):
        self._send(405, {"error": "use GET"})

    def do_POST(self):
        self._send(405, {"error": "the API is read-only: use GET"})

    def _export(self, q: Query) -> None:
        fmt = q.take("format", "csv")
        if fmt not in FORMATS:
            raise BadParameter("format", f"must be csv or parquet, not {fmt!r}")
        start, end = q.times()
        where = q.where()
        q.done()
        fd, tmp = tempfile.mkstemp(prefix="capfan-export-", suffix=f".{fmt}")
        os.close(fd)
        try:
            rows = self.api.store.export(tmp, fmt, where=where, start_ns=start, end_ns=end)
            size = os.path.getsize(tmp)
            self.send_response(200)
            self.send_header("Content-Type", FORMATS[fmt])
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition", f'attachment; filename="flows.{fmt}"')
            self.send_header("X-Capfan-Rows", str(rows))
            self.end_headers()
            with open(tmp, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
        finally:
            os.unlink(tmp)
