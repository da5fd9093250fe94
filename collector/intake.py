"""The collector's ZeroMQ intake: a ROUTER socket agents' DEALERs send record batches to.

Each message is decoded with capfan.wire, stored with Store.ingest and acknowledged only after
ingest returned (the batch is committed). A duplicate (host, seq) is acked again so the agent
drops it from its spool. In curve mode a ZAP handler lets only listed agent public keys complete
the handshake, so an unauthenticated peer never gets a message through. Nothing a peer sends
can stop the loop: bad messages are counted (and rejected for good when their seq is readable).
"""
from __future__ import annotations

import logging
import threading
import time

import zmq
import zmq.utils.z85
from zmq.utils.monitor import recv_monitor_message

from capfan import wire
from capfan.records import FLOW_DTYPE

from . import store as store_mod

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"capfan"
DRAIN_MAX = 256            # messages handled before the acks go out (acks batched per peer)
POLL_MS = 100              # how often the loop looks at the stop flag
ZMQ_SIZE_SLACK = 64 << 10  # ZMQ_MAXMSGSIZE headroom: slightly-too-big messages are counted, not dropped
_MONITOR_EVENTS = {zmq.EVENT_ACCEPTED: "connections", zmq.EVENT_DISCONNECTED: "disconnects",
                   zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failures",
                   zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failures",
                   zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failures"}
COUNTERS = ("received", "journaled", "stored", "duplicates", "rejected_malformed", "rejected_oversized", "rejected_version",
            "denied_unauthenticated", "store_errors", "acks_sent", "records_stored", "connections", "disconnects",
            "handshake_failures")


def error_kind(err: Exception) -> str:
    """'oversized', 'version' or 'malformed': which counter a WireError goes to."""
    kind = getattr(err, "kind", "malformed")
    return kind if kind in ("oversized", "version", "malformed") else "malformed"


# the fields Store.ingest reads from a `flows` batch, with the types it can store
_FLOW_FIELDS = [f for _, f, _ in store_mod._FLOW_COLUMNS] + [f for _, f in store_mod._ADDR_COLUMNS]


def content_error(batch) -> str | None:
    """Why the store would refuse a decoded batch for good, or None. Checked before the batch is
    journaled: once acked it must load, or it would stop the loader at that batch forever."""
    fields = batch.records.dtype.fields
    if batch.stream == store_mod.FLOWS:
        for name in _FLOW_FIELDS:
            want = FLOW_DTYPE.fields[name][0]
            have = fields[name][0] if name in fields else None
            if have is None:
                return f"stream 'flows' needs FLOW_DTYPE records; field {name} is missing"
            if have != want and not (want.kind == "V" and have.kind in "SV" and have.itemsize == want.itemsize):
                return f"stream 'flows' needs FLOW_DTYPE records; field {name} is {have.str}, not {want.str}"
        return None
    for name, (t, *_rest) in fields.items():
        if t.kind == "c":  # stored as JSON, which has no complex numbers
            return f"field {name} is complex ({t.str}); the {batch.stream!r} stream is stored as JSON"
    return None


class Intake:
    """One intake thread: bind, receive, store, ack; `counters()` for health and status."""

    def __init__(self, store, listen: str, *, mode: str = "curve", secret_key: str | None = None,
                 authorized=(), max_message_bytes: int = wire.MAX_MESSAGE_BYTES, journal=None):
        if mode not in ("curve", "plain"):
            raise ValueError(f"mode must be 'curve' or 'plain', not {mode!r}")
        if mode == "curve" and not (secret_key and authorized):
            raise ValueError("curve mode needs the server's secret key and at least one authorized public key")
        self.store = store
        # with a journal, a batch is acked once journaled and synced; the loader stores it
        self.journal = journal
        self.listen = listen
        self.mode = mode
        self.max_bytes = max_message_bytes
        self._secret = secret_key.encode() if isinstance(secret_key, str) else secret_key
        self._authorized = {k.encode() if isinstance(k, str) else k for k in authorized}
        self._ctx = zmq.Context()  # own context: one ZAP handler per context
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._hosts: dict[str, dict] = {}
        self.endpoint: str | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 10.0) -> str:
        """Bind and start serving in a thread; returns the bound endpoint (a `*` port resolved)."""
        self._thread = threading.Thread(target=self._run, name="capfan-intake", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("intake did not start")
        if self._error is not None:
            raise self._error
        return self.endpoint

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving (a batch being stored is finished and acked first) and close the sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._ctx.term()

    def counters(self) -> dict:
        """A snapshot: the COUNTERS plus `hosts` {host: last_seen_ns, batches, records, duplicates, rejected}."""
        with self._lock:
            out = dict(self._counts)
            out["hosts"] = {h: dict(v) for h, v in self._hosts.items()}
        return out

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _host(self, host: str, **add) -> None:
        with self._lock:
            h = self._hosts.setdefault(host, {"last_seen_ns": 0, "batches": 0, "records": 0, "duplicates": 0,
                                              "rejected": 0})
            h["last_seen_ns"] = time.time_ns()
            for k, v in add.items():
                h[k] += v

    # ------------------------------------------------------------------ the loop

    def _bind(self):
        zap = None
        if self.mode == "curve":
            # the ZAP handler must exist before the first handshake, or libzmq lets every key in
            zap = self._ctx.socket(zmq.ROUTER)
            zap.linger = 0
            zap.bind(ZAP_ENDPOINT)
        router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.rcvhwm = 100                      # bounds memory: 100 messages per connected agent
        router.maxmsgsize = self.max_bytes + ZMQ_SIZE_SLACK
        if self.mode == "curve":
            router.zap_domain = ZAP_DOMAIN
            router.curve_server = True
            router.curve_secretkey = self._secret
        monitor = router.get_monitor_socket(sum(_MONITOR_EVENTS))
        try:
            router.bind(self.listen)
        except zmq.ZMQError as e:
            for s in (router, monitor, zap):
                if s is not None:
                    s.close(0)
            raise OSError(f"cannot listen on {self.listen}: {e}") from None
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        return router, zap, monitor

    def _run(self) -> None:
        try:
            router, zap, monitor = self._bind()
        except Exception as e:  # noqa: BLE001 - handed to start(), which raises it
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        for s in (router, zap, monitor):
            if s is not None:
                poller.register(s, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(POLL_MS))
                if zap is not None and zap in events:
                    self._zap(zap)
                if monitor in events:
                    self._monitor(monitor)
                if router in events:
                    self._drain(router)
        except Exception:  # a bug here must not leave the collector half alive without saying so
            log.exception("intake loop failed")
            raise
        finally:
            router.disable_monitor()
            for s in (router, zap, monitor):
                if s is not None:
                    s.close(0)

    def _drain(self, router) -> None:
        acks: dict[bytes, tuple[list[int], dict[int, str]]] = {}
        for _ in range(DRAIN_MAX):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle(frames[0], frames[1:], acks)
        if self.journal is not None and any(seqs for seqs, _ in acks.values()):
            try:
                self.journal.sync()  # one fsync for the whole group (group commit)
            except Exception as e:  # noqa: BLE001 - nothing durable: ack nothing, the agents resend
                self._add("store_errors")
                log.error("syncing the journal failed (nothing acked, the agents resend): %s", e)
                acks = {i: ([], r) for i, (_, r) in acks.items() if r}
        # every seq in `acks` is durable now (journal synced, or committed by store.ingest)
        for ident, (seqs, rejected) in acks.items():
            try:
                router.send_multipart([ident, *wire.encode_ack(seqs, rejected or None)], zmq.NOBLOCK)
                self._add("acks_sent")
            except zmq.ZMQError:
                pass  # peer gone or its queue full: it resends, the duplicate is acked then

    def _handle(self, ident: bytes, payload: list[bytes], acks: dict) -> None:
        self._add("received")
        size = sum(len(f) for f in payload)
        try:
            batch = wire.decode(payload, self.max_bytes)
        except wire.WireError as e:
            kind = error_kind(e)
            self._add(f"rejected_{kind}")
            seq = getattr(e, "seq", None)
            host = getattr(e, "host", None)
            if isinstance(host, str):
                self._host(host, rejected=1)
            if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0:
                acks.setdefault(ident, ([], {}))[1][seq] = f"{kind}: {e}"
            log.debug("rejected %s message (%d bytes): %s", kind, size, e)
            return
        why = content_error(batch)
        if why is not None:  # the store would refuse it: resending cannot help, reject it for good
            self._add("rejected_malformed")
            self._host(batch.host, rejected=1)
            acks.setdefault(ident, ([], {}))[1][batch.seq] = f"malformed: {why}"
            return
        if self.journal is not None:
            try:
                self.journal.append(payload)
            except Exception as e:  # noqa: BLE001 - disk full/failed: no ack, the agent resends
                self._add("store_errors")
                log.error("journaling batch %s/%d failed (not acked, the agent resends): %s", batch.host, batch.seq, e)
                return
            self._add("journaled")
            self._host(batch.host, batches=1, records=len(batch.records))
            acks.setdefault(ident, ([], {}))[0].append(batch.seq)
            return
        try:
            fresh = self.store.ingest(batch.host, batch.seq, batch.stream, batch.source, batch.records)
        except (ValueError, TypeError) as e:
            # the store refuses this content: resending cannot help, so reject it for good
            self._add("rejected_malformed")
            self._host(batch.host, rejected=1)
            acks.setdefault(ident, ([], {}))[1][batch.seq] = f"malformed: store refused the batch: {e}"
            return
        except Exception as e:  # noqa: BLE001 - a store failure must not stop the intake; no ack: it is resent
            self._add("store_errors")
            log.error("storing batch %s/%d failed (not acked, the agent resends): %s", batch.host, batch.seq, e)
            return
        if fresh:
            self._add("stored")
            self._add("records_stored", len(batch.records))
            self._host(batch.host, batches=1, records=len(batch.records))
        else:
            self._add("duplicates")
            self._host(batch.host, duplicates=1)
        acks.setdefault(ident, ([], {}))[0].append(batch.seq)

    def _zap(self, zap) -> None:
        # ZAP (RFC 27) over ROUTER: [peer, b"", version, request_id, domain, address, identity, mechanism, *creds]
        msg = zap.recv_multipart()
        try:
            peer, empty, version, request_id, _domain, address, _identity, mechanism, *creds = msg
        except ValueError:
            return
        ok = mechanism == b"CURVE" and creds and len(creds[0]) == 32 and zmq.utils.z85.encode(creds[0]) \
            in self._authorized
        if not ok:
            self._add("denied_unauthenticated")
            log.info("denied %s peer at %s: public key not authorized", mechanism.decode(errors="replace"),
                     address.decode(errors="replace"))
        user = zmq.utils.z85.encode(creds[0]) if ok else b""
        zap.send_multipart([peer, empty, version, request_id, b"200" if ok else b"400",
                            b"OK" if ok else b"key not authorized", user, b""])

    def _monitor(self, monitor) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            name = _MONITOR_EVENTS.get(event["event"])
            if name:
                self._add(name)
