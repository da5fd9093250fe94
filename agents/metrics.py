"""Prometheus endpoint of the agent: render() turns a status snapshot into the text exposition
format (0.0.4), MetricsServer serves it (and the snapshot as JSON) over HTTP."""
from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from capfan import __version__
from capfan.errors import ConfigError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
DEFAULT_HOST = "127.0.0.1"   # a listen address without a host stays on this machine
REQUEST_TIMEOUT_S = 5.0      # a client that stalls longer loses its connection (and its thread)
POLL_INTERVAL_S = 0.1        # how soon serve_forever notices close()

# (metric, type, help, snapshot key or function of the record)
QUEUE_METRICS = (
    ("capfan_queue_rx_packets_total", "counter", "Packets the capture worker of the queue received.", "rx_packets"),
    ("capfan_queue_rx_bytes_total", "counter", "Bytes the capture worker of the queue received.", "rx_bytes"),
    ("capfan_queue_published_packets_total", "counter", "Packets written into the queue's ring.", "published"),
    ("capfan_queue_kernel_drops_total", "counter",
     "Packets the kernel dropped before the capture worker could read them.", "kernel_drops"),
    ("capfan_queue_ring_drops_total", "counter", "Packets dropped because the queue's ring was full.", "ring_drops"),
    ("capfan_queue_ring_used_descriptors", "gauge", "Ring descriptors holding packets not yet released.", "ring_used"),
    ("capfan_queue_ring_size_descriptors", "gauge", "Descriptors of the queue's ring.", "ring_size"),
    ("capfan_queue_ring_fill_ratio", "gauge", "Used share of the queue's ring descriptors (0 to 1).", "ring_fill"),
)
CONSUMER_METRICS = (
    ("capfan_consumer_delivered_packets_total", "counter", "Packets the ring delivered to the consumer.", "delivered"),
    ("capfan_consumer_dropped_packets_total", "counter",
     "Packets the consumer missed (lossy consumer lapped, or demoted).", "dropped"),
    ("capfan_consumer_filtered_packets_total", "counter",
     "Packets the consumer's filter or group member selection skipped.", "filtered"),
    ("capfan_consumer_demotions_total", "counter",
     "Times the reliable consumer was demoted to lossy for holding up the ring.", "demotions"),
    ("capfan_consumer_lag_packets", "gauge", "Packets published but not yet read by the consumer.", "lag"),
)
INTERFACE_METRICS = (
    ("capfan_interface_rx_packets_total", "counter", "Packets the NIC received (its own counter).", "rx_packets"),
    ("capfan_interface_rx_bytes_total", "counter", "Bytes the NIC received (its own counter).", "rx_bytes"),
    ("capfan_interface_nic_drops_total", "counter",
     "Packets the NIC dropped before the kernel saw them (rx_missed, rx_fifo...).", "nic_drops"),
)
WORKER_METRICS = (
    ("capfan_worker_up", "gauge", "1 while the worker process runs, else 0 (starting, backoff, failed, done...).",
     lambda w: 1 if w.get("state") == "running" else 0),
    ("capfan_worker_restarts_total", "counter", "Times the supervisor restarted the worker.", "restarts"),
    ("capfan_worker_cpu_seconds_total", "counter", "CPU time the current worker process used.", "cpu_seconds"),
    ("capfan_worker_resident_memory_bytes", "gauge", "Resident memory of the worker process.", "rss_bytes"),
)
EXPORT_METRICS = (   # from the exporter worker's stats
    ("capfan_export_sent_batches_total", "counter", "Record batches the exporter sent (resends included).", "sent"),
    ("capfan_export_acked_batches_total", "counter", "Batches every collector acknowledged.", "acked"),
    ("capfan_export_rejected_batches_total", "counter", "Batches a collector rejected for good.", "rejected"),
    ("capfan_export_pending_batches", "gauge", "Batches waiting for an acknowledgement.", "pending"),
    ("capfan_export_spool_bytes", "gauge", "Bytes in the agent's spool.", "spool_bytes"),
    ("capfan_export_spool_dropped_batches_total", "counter", "Batches dropped because the spool was full.",
     "spool_dropped_batches"),
    ("capfan_export_spool_dropped_records_total", "counter", "Records in batches dropped because the spool was full.",
     "spool_dropped_records"),
)
COLLECTOR_METRICS = (   # per collector endpoint of the exporter
    ("capfan_export_collector_connected", "gauge", "1 while the exporter is connected to the collector.",
     lambda c: 1 if c.get("connected") else 0),
    ("capfan_export_collector_inflight_batches", "gauge", "Batches sent to the collector, not yet acknowledged.",
     "inflight"),
    ("capfan_export_collector_sent_batches_total", "counter",
     "Batches (or, with route flow-hash, batch parts) sent to the collector, resends included.", "sent"),
    ("capfan_export_collector_acked_batches_total", "counter", "Batches (or parts) the collector acknowledged.",
     "acked"),
    ("capfan_export_collector_sent_records_total", "counter", "Records sent to the collector, resends included.",
     "records_sent"),
    ("capfan_export_collector_acked_records_total", "counter", "Records the collector acknowledged.",
     "records_acked"),
)
AGENT_INFO = ("capfan_agent_info", "gauge", "Always 1; the labels name the agent and the capfan version.",
              lambda a: 1)
AGENT_METRICS = (
    ("capfan_agent_start_time_seconds", "gauge", "When the agent started, seconds since the epoch.", "started"),
    ("capfan_agent_uptime_seconds", "gauge", "Seconds since the agent started.", "uptime"),
)
WARNINGS_METRIC = ("capfan_agent_warnings", "gauge",
                   "Configuration and host warnings the agent reports (their text: /status, `capfan status`).")

QUEUE_LABELS = ("ring", "capture", "interface", "source", "queue")
CONSUMER_LABELS = ("consumer", "analyzer", "group", "member", "policy")   # after the queue's ring
WORKER_LABELS = ("kind", "ring", "consumer")                             # after worker=id


# ------------------------------------------------------------------ exposition

class _Family:
    """One metric family: HELP, TYPE and its samples, each label set once."""

    def __init__(self, name: str, kind: str, help_text: str):
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[str] = []
        self._seen: set[str] = set()

    def add(self, labels: dict, value) -> None:
        """Add a sample; null or non-numeric values are left out (never NaN)."""
        text = _number(value)
        if text is None:
            return
        label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
        # Prometheus rejects the whole scrape on a duplicate series: keep the first one
        if label_text in self._seen:
            return
        self._seen.add(label_text)
        self.samples.append(f"{self.name}{{{label_text}}} {text}" if label_text else f"{self.name} {text}")

    def lines(self) -> list[str]:
        """The family's lines of the exposition."""
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}", *self.samples]


def render(snapshot: dict) -> str:
    """Prometheus text exposition (format 0.0.4) of one agent status snapshot."""
    families: dict[str, _Family] = {}

    def add_all(table, labels: dict, record: dict) -> None:
        for name, kind, help_text, key in table:
            families[name].add(labels, key(record) if callable(key) else record.get(key))

    # declare every family up front, so an empty snapshot still lists the metric names
    for table in (QUEUE_METRICS, CONSUMER_METRICS, INTERFACE_METRICS, WORKER_METRICS, EXPORT_METRICS,
                  COLLECTOR_METRICS, (AGENT_INFO,), AGENT_METRICS):
        for name, kind, help_text, _key in table:
            families[name] = _Family(name, kind, help_text)
    warnings = families[WARNINGS_METRIC[0]] = _Family(*WARNINGS_METRIC)

    for q in _records(snapshot.get("queues")):
        add_all(QUEUE_METRICS, {k: q.get(k) for k in QUEUE_LABELS}, q)
        for c in _records(q.get("consumers")):
            add_all(CONSUMER_METRICS, {"ring": q.get("ring"), **{k: c.get(k) for k in CONSUMER_LABELS}}, c)
    interfaces = snapshot.get("interfaces")
    for iface, counters in (interfaces.items() if isinstance(interfaces, dict) else ()):
        if isinstance(counters, dict):
            add_all(INTERFACE_METRICS, {"interface": iface}, counters)
    for w in _records(snapshot.get("workers")):
        add_all(WORKER_METRICS, {"worker": w.get("id"), **{k: w.get(k) for k in WORKER_LABELS}}, w)
        st = w.get("stats")
        if w.get("kind") == "exporter" and isinstance(st, dict):
            add_all(EXPORT_METRICS, {}, st)
            for c in _records(st.get("collectors")):
                add_all(COLLECTOR_METRICS, {"endpoint": c.get("endpoint")}, c)
    agent = snapshot.get("agent")
    if isinstance(agent, dict):
        add_all((AGENT_INFO,), {"name": agent.get("name"), "version": __version__}, agent)
        add_all(AGENT_METRICS, {}, agent)
    if isinstance(snapshot.get("warnings"), list):
        warnings.add({}, len(snapshot["warnings"]))

    lines = [line for fam in families.values() for line in fam.lines()]
    return "\n".join(lines) + "\n"


def _records(value) -> list[dict]:
    """The dict items of a snapshot list (anything else there is ignored, not fatal)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _number(value) -> str | None:
    """A sample value in exposition syntax, or None for null / non-numbers."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return None


def _escape_label(value) -> str:
    """A label value with backslash, double quote and line feed escaped; null is empty."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


# ------------------------------------------------------------------ HTTP

def _metrics_body(snapshot: dict) -> tuple[bytes, str]:
    return render(snapshot).encode("utf-8"), CONTENT_TYPE


def _status_body(snapshot: dict) -> tuple[bytes, str]:
    return (json.dumps(snapshot) + "\n").encode("utf-8"), JSON_TYPE


ROUTES = {"/metrics": _metrics_body, "/status": _status_body}


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of /metrics and /status; 404 for anything else, 503 when there is no snapshot."""

    timeout = REQUEST_TIMEOUT_S
    server_version = f"capfan/{__version__}"

    def do_GET(self):
        self._answer(with_body=True)

    def do_HEAD(self):
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        route = ROUTES.get(urlsplit(self.path).path)
        if route is None:
            code, body, ctype = 404, b"not found: the agent serves /metrics and /status\n", TEXT_TYPE
        else:
            try:
                body, ctype = route(self.server.snapshot())
                code = 200
            except Exception as e:  # a broken snapshot must not take the endpoint (or agent) down
                log.debug("metrics: snapshot failed", exc_info=True)
                code, ctype = 503, TEXT_TYPE
                body = f"status snapshot unavailable: {type(e).__name__}: {e}\n".encode("utf-8", "replace")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format, *args):
        # the agent's stderr is its log: one line per scrape would drown it
        pass


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer on a given address family that never does DNS and never prints."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, family: int, snapshot: Callable[[], dict]):
        self.address_family = family
        self.snapshot = snapshot
        super().__init__(address, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind looks up the fully qualified host name: a DNS query that can
        # hang the caller, for a name nobody here uses
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # client hang-ups and timeouts are routine; the default prints a traceback to stderr.
        # socketserver calls this inside its `except`, so exc_info is the request's exception
        log.debug("metrics: request from %s failed", client_address, exc_info=True)  # noqa: LOG014


class MetricsServer:
    """HTTP on one address serving /metrics (Prometheus text) and /status (the snapshot as JSON)."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict]):
        self.host, self._port, self._snapshot = host, port, snapshot
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Bind the address and serve from a daemon thread; ConfigError if it cannot listen."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("MetricsServer already started")
            try:
                family, address = _bind_address(self.host, self._port)
                self._server = _HTTPServer(address, family, self._snapshot)
            except OSError as e:
                raise ConfigError("metrics.listen", f"cannot listen on {format_address(self.host, self._port)}: "
                                  f"{e.strerror or e}; pick another port or set metrics.enabled = false") from e
            self._port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_INTERVAL_S,),
                                            name=f"capfan-metrics-{self._port}", daemon=True)
            self._thread.start()

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def address(self) -> str:
        """HOST:PORT as a listen setting would write it ([v6]:port for IPv6)."""
        return format_address(self.host, self._port)

    def close(self) -> None:
        """Stop serving and release the socket; idempotent."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        if thread is not None:
            server.shutdown()  # waits for serve_forever to return (at most POLL_INTERVAL_S)
            thread.join(timeout=1.0)
        server.server_close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()


def _bind_address(host: str, port: int) -> tuple[int, tuple]:
    """(address family, socket address) to bind HOST:PORT; raises OSError (gaierror) if unknown."""
    if not host:
        return socket.AF_INET, ("", port)
    family, _type, _proto, _canon, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, address


def format_address(host: str, port: int) -> str:
    """'127.0.0.1:9477', '[::1]:9477'."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True if HOST only accepts connections from this machine (so no warning is needed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ configuration

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_listen(value: str, key: str = "metrics.listen") -> tuple[str, int]:
    """'127.0.0.1:9477', '[::1]:9477', ':9477' (loopback), '9477' -> (host, port); ConfigError(key) otherwise.

    Port 0 means any free port (the status snapshot shows the one bound)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `listen = 9477` in TOML
    if not isinstance(value, str):
        raise ConfigError(key, f"expected text like '127.0.0.1:9477', got {type(value).__name__}")
    text = value.strip()

    def bad(reason: str) -> ConfigError:
        return ConfigError(key, f"{value!r} is not a listen address ({reason}); write HOST:PORT, "
                                f"e.g. 127.0.0.1:9477, [::1]:9477 or 9477 (loopback)")

    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise bad("an IPv6 address in brackets needs ']:PORT' after it")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise bad("put an IPv6 address in brackets, e.g. [::1]:9477")
        host = host or DEFAULT_HOST
        if not _HOSTNAME.fullmatch(host):
            raise bad(f"{host!r} is not a host name or address")
    else:
        host, port_text = DEFAULT_HOST, text
    if not port_text.isdigit() or not port_text.isascii():
        raise bad(f"port {port_text!r} is not a number" if port_text else "no port")
    port = int(port_text)
    if port > 65535:
        raise bad(f"port {port} is above 65535")
    return host, port
