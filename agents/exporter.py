"""The agent's exporter: claims spooled batches, sends them to every configured collector over a
ZeroMQ DEALER (CURVE-encrypted unless plain text was chosen), deletes a batch once every collector
acked it, resends whatever was unacked after a reconnect or an ack timeout.

With route = "flow-hash" (agents/routing.py) a flow batch is split at claim time and each
collector is sent only its part, under the batch's (host, seq); the batch is due only to the
collectors that got a non-empty part and leaves the spool when all of those acked. A collector
that is down keeps its parts spooled while the others go on.

Delivery is at-least-once per collector: a batch can arrive twice (sent, connection lost before
the ack), the collector recognises (host, seq) and acks again. Order is seq order except for resends.
"""
from __future__ import annotations

import bisect
import heapq
import logging
import os
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from capfan import keys, wire
from capfan.errors import CapfanError

from . import spool as spoolmod
from .routing import ROUTES, FlowHashSplit

log = logging.getLogger("capfan.agents.exporter")

_HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication refused by the collector (is this agent's public key "
                                     "listed there? is server_key the collector's public key?)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake protocol error (plain text on one side, CURVE on the other?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed (wrong collector server_key?)",
}


class ExporterError(CapfanError):
    """The exporter configuration cannot work (collectors, keys)."""


class _Link:
    """One collector: its socket, monitor and what is in flight there."""

    def __init__(self, idx: int, endpoint: str, server_key: str | None):
        self.idx, self.endpoint, self.server_key = idx, endpoint, server_key
        self.sock = self.mon = None
        self.connected = False
        self.inflight: dict[int, float] = {}  # seq -> monotonic send time
        self.resend: list[int] = []           # heap of seqs to send again before new ones
        self.next_new = 0                     # every pending seq >= this is unsent on this link
        self.sent = self.acked = self.resent = self.duplicates = self.rejected = self.bad_acks = 0
        self.records_sent = self.records_acked = 0
        self.part_records: dict[int, int] = {}  # seq -> records in this collector's part (sent, not acked)
        self.connects = self.disconnects = 0
        self.last_ack_ns = 0
        self.last_error = ""

    def requeue(self) -> None:
        """Everything in flight goes out again (lost with the connection, or not acked in time)."""
        for seq in self.inflight:
            heapq.heappush(self.resend, seq)
        self.inflight.clear()

    def stats(self) -> dict:
        """This collector's counters."""
        return {"endpoint": self.endpoint, "connected": self.connected, "inflight": len(self.inflight),
                "sent": self.sent, "acked": self.acked, "resent": self.resent, "duplicates_acked": self.duplicates,
                "records_sent": self.records_sent, "records_acked": self.records_acked,
                "rejected": self.rejected, "bad_acks": self.bad_acks, "connects": self.connects,
                "disconnects": self.disconnects, "last_ack_ns": self.last_ack_ns, "last_error": self.last_error}


class Exporter:
    """Ships the spool of one agent host to its collectors (one process per agent)."""

    def __init__(self, spool_dir: str, host: str, collectors: list[dict], curve: dict | None, window: int = 64,
                 codec: str | None = None, ack_timeout: float = 30.0, heartbeat_ivl: float = 1.0,
                 heartbeat_timeout: float = 5.0, reconnect_ivl: float = 0.1, reconnect_ivl_max: float = 5.0,
                 claim_interval: float = 0.05, resync_interval: float = 5.0, max_ack_bytes: int = 1 << 20,
                 route: str = "all"):
        if not collectors:
            raise ExporterError("no collectors configured: give at least one {endpoint, server_key}")
        if route not in ROUTES:
            raise ExporterError(f"route {route!r} is not one of {', '.join(ROUTES)}")
        if window < 1:
            raise ExporterError(f"window must be at least 1, not {window}")
        if curve is not None:
            curve = {"public": keys.check_key(curve.get("public"), "the agent's public key"),
                     "secret": keys.check_key(curve.get("secret"), "the agent's secret key")}
        self.links = []
        for i, c in enumerate(collectors):
            ep, sk = c.get("endpoint"), c.get("server_key")
            if not isinstance(ep, str) or "://" not in ep:
                raise ExporterError(f"collector {i}: endpoint {ep!r} is not a ZeroMQ endpoint like tcp://host:5555")
            if curve is not None:
                if sk is None:
                    raise ExporterError(f"collector {ep}: server_key (the collector's public key) is needed "
                                        "for CURVE")
                sk = keys.check_key(sk, f"collector {ep} server_key")
            elif sk is not None:
                raise ExporterError(f"collector {ep} has a server_key but the agent has no key pair: configure "
                                    "the agent's keys (or remove server_key for plain text)")
            self.links.append(_Link(i, ep, sk))
        self.host, self.curve, self.window = host, curve, window
        self.ack_timeout, self.hb_ivl, self.hb_timeout = ack_timeout, heartbeat_ivl, heartbeat_timeout
        self.reconnect_ivl, self.reconnect_ivl_max = reconnect_ivl, reconnect_ivl_max
        self.claim_interval, self.resync_interval, self.max_ack_bytes = claim_interval, resync_interval, max_ack_bytes
        self.spool_dir, self.route = spool_dir, route
        self._link_of = {ln.endpoint: ln.idx for ln in self.links}
        split = None
        if route == "flow-hash":
            if len(self._link_of) != len(self.links):
                raise ExporterError("route \"flow-hash\" needs distinct collector endpoints; one is listed twice")
            split = FlowHashSplit([ln.endpoint for ln in self.links])
        self.spool = spoolmod.Spool(spool_dir, host=host, codec=codec, split=split)
        self.rejections: dict[int, str] = {}
        self.owed: dict[int, set[int]] = {}  # seq -> links yet to ack it
        self.pending: list[int] = []
        for seq in self.spool.pending():
            owed = self._due_links(seq)
            if owed:
                self.pending.append(seq)
                self.owed[seq] = owed
        self.acked = self.rejected = self.gone = 0
        self._frames: dict[int, dict] = {}  # seq -> load_parts(seq), for one round
        self._spool_stats: dict = {}
        self._spool_stats_at = -1e18
        self.ctx = None

    # ------------------------------------------------------------ sockets

    def _open(self) -> None:
        self.ctx = zmq.Context()
        for ln in self.links:
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)            # unacked batches stay in the spool anyway
            s.setsockopt(zmq.IMMEDIATE, 1)         # no queueing to a collector that is not connected
            s.setsockopt(zmq.SNDHWM, 2 * self.window + 16)
            s.setsockopt(zmq.MAXMSGSIZE, self.max_ack_bytes)  # acks are small; a rogue peer cannot balloon us
            s.setsockopt(zmq.HEARTBEAT_IVL, int(self.hb_ivl * 1000))
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(self.hb_timeout * 1000))
            s.setsockopt(zmq.HEARTBEAT_TTL, int(self.hb_timeout * 1000))
            s.setsockopt(zmq.RECONNECT_IVL, int(self.reconnect_ivl * 1000))
            s.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.reconnect_ivl_max * 1000))
            s.setsockopt(zmq.TCP_KEEPALIVE, 1)
            if self.curve is not None:
                s.curve_secretkey = self.curve["secret"].encode()
                s.curve_publickey = self.curve["public"].encode()
                s.curve_serverkey = ln.server_key.encode()
            ln.mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                          | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_CONNECT_RETRIED)
            try:
                s.connect(ln.endpoint)
            except zmq.ZMQError as e:
                self._close()
                raise ExporterError(f"collector endpoint {ln.endpoint}: {e}") from None
            ln.sock = s

    def _close(self) -> None:
        for ln in self.links:
            for attr in ("mon", "sock"):
                s = getattr(ln, attr)
                if s is not None:
                    if attr == "sock":
                        try:
                            s.disable_monitor()
                        except zmq.ZMQError:
                            pass
                    s.close(0)
                    setattr(ln, attr, None)
            ln.connected = False
            ln.requeue()
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    def _events(self, ln: _Link) -> None:
        while True:
            try:
                ev = recv_monitor_message(ln.mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            e = ev["event"]
            log.debug("collector %s: monitor event %s", ln.endpoint, zmq.Event(e).name)
            if e == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                ln.connected, ln.last_error = True, ""
                # a send between the drop and this socket noticing it lands in the dead pipe (seen
                # under load) and no event ever reports it: everything unacked goes out again
                ln.requeue()
                ln.connects += 1
                log.info("collector %s connected", ln.endpoint)
            elif e == zmq.EVENT_DISCONNECTED:
                if ln.connected:
                    ln.disconnects += 1
                    log.warning("collector %s disconnected; %d batches in flight will be resent",
                                ln.endpoint, len(ln.inflight))
                ln.connected = False
                ln.requeue()
            elif e in _HANDSHAKE_FAILED:
                ln.connected = False
                if ln.last_error != _HANDSHAKE_FAILED[e]:
                    log.error("collector %s: %s", ln.endpoint, _HANDSHAKE_FAILED[e])
                ln.last_error = _HANDSHAKE_FAILED[e]
            elif e == zmq.EVENT_CONNECT_RETRIED and not ln.last_error:
                ln.last_error = "not reachable (connection refused or timed out; retrying)"

    # ------------------------------------------------------------ spool bookkeeping

    def _claim(self) -> int:
        new = self.spool.claim()
        for seq in new:  # claimed seqs are above every pending one
            owed = self._due_links(seq)
            if owed:
                self.pending.append(seq)
                self.owed[seq] = owed
        return len(new)

    def _due_links(self, seq: int) -> set[int]:
        """The links batch `seq` is due to: all, or those its parts are addressed to. Parts for a
        collector no longer configured go back to the spool's incoming/ to be routed again."""
        due = self.spool.due(seq)
        if due is None:
            return set(range(len(self.links)))
        if any(ep not in self._link_of for ep in due):
            try:
                due = self.spool.respool(seq, self._link_of)
            except (CapfanError, OSError) as e:
                log.error("batch %d: cannot re-route the parts of removed collectors: %s", seq, e)
                due = tuple(ep for ep in due if ep in self._link_of)
        return {self._link_of[ep] for ep in due}

    def _resync(self) -> None:
        """Forget batches a full spool dropped (drop_oldest) behind our back."""
        on_disk = set(self.spool.pending())
        for seq in [s for s in self.pending if s not in on_disk]:
            self._forget(seq)
            self.gone += 1

    def _forget(self, seq: int) -> None:
        i = bisect.bisect_left(self.pending, seq)
        if i < len(self.pending) and self.pending[i] == seq:
            del self.pending[i]
        self.owed.pop(seq, None)
        self.rejections.pop(seq, None)
        for ln in self.links:
            ln.inflight.pop(seq, None)
            ln.part_records.pop(seq, None)

    def _load(self, seq: int, ln: _Link) -> tuple[int, list[bytes]] | None:
        """(records, frames) of what `ln` is to be sent of batch `seq`; None if the batch is gone."""
        parts = self._frames.get(seq)
        if parts is None:
            parts = self.spool.load_parts(seq)
            if parts is None:
                return None
            self._frames[seq] = parts
        return parts.get(None) or parts.get(ln.endpoint)

    # ------------------------------------------------------------ send / ack

    def _send(self, ln: _Link, now: float) -> None:
        if not ln.connected:  # only after a handshake: sends before it could go to a dead pipe
            return
        while len(ln.inflight) < self.window:
            again = bool(ln.resend)
            if again:
                seq = heapq.heappop(ln.resend)
                if ln.idx not in self.owed.get(seq, ()) or seq in ln.inflight:
                    continue
            else:
                i = bisect.bisect_left(self.pending, ln.next_new)
                if i == len(self.pending):
                    return
                seq = self.pending[i]
                ln.next_new = seq + 1
                if ln.idx not in self.owed[seq]:
                    continue
            part = self._load(seq, ln)
            if part is None:  # dropped to make room, or corrupt (moved to rejected/)
                if seq in self._frames:  # the file is there but holds no part for ln: not due after all
                    self.owed[seq].discard(ln.idx)
                    if not self.owed[seq]:
                        self._settle(seq)
                    continue
                self._forget(seq)
                self.gone += 1
                continue
            nrec, frames = part
            try:
                ln.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:  # not connected (IMMEDIATE) or the pipe is full: later
                if again:
                    heapq.heappush(ln.resend, seq)
                else:
                    ln.next_new = seq
                return
            ln.inflight[seq] = now
            ln.sent += 1
            ln.resent += again
            ln.records_sent += nrec
            ln.part_records[seq] = nrec

    def _recv(self, ln: _Link) -> None:
        while True:
            try:
                frames = ln.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                seqs, rejected = wire.decode_ack(frames)
            except CapfanError as e:
                ln.bad_acks += 1
                log.warning("collector %s sent a malformed ack: %s", ln.endpoint, e)
                continue
            ln.last_ack_ns = time.time_ns()
            for seq in seqs:
                self._done(ln, seq, None)
            for seq, reason in rejected.items():
                self._done(ln, seq, reason)

    def _done(self, ln: _Link, seq: int, reason: str | None) -> None:
        ln.inflight.pop(seq, None)
        owed = self.owed.get(seq)
        if owed is None or ln.idx not in owed:
            ln.duplicates += 1  # an ack for a resent batch this collector had already acked
            return
        owed.discard(ln.idx)
        if reason is None:
            ln.acked += 1
            ln.records_acked += ln.part_records.pop(seq, 0)
        else:
            ln.rejected += 1
            self.rejections[seq] = reason
            log.warning("collector %s rejected batch %d for good: %s", ln.endpoint, seq, reason)
        if not owed:
            self._settle(seq)

    def _settle(self, seq: int) -> None:
        """Every collector due batch `seq` answered: delete it, or move it to rejected/ if one refused it."""
        reason = self.rejections.get(seq)
        self._forget(seq)
        self._frames.pop(seq, None)
        if reason is None:
            self.spool.ack(seq)
            self.acked += 1
        else:
            self.spool.reject(seq, reason)
            self.rejected += 1

    def _timeouts(self, ln: _Link, now: float) -> None:
        late = [s for s, t in ln.inflight.items() if now - t > self.ack_timeout]
        for seq in late:
            del ln.inflight[seq]
            heapq.heappush(ln.resend, seq)
        if late:
            log.warning("collector %s: %d batches not acked within %.0f s, resending", ln.endpoint, len(late),
                        self.ack_timeout)

    # ------------------------------------------------------------ main loop

    def run(self, stop: Callable[[], bool], report: Callable[[dict], None] | None = None,
            report_every: float = 1.0) -> None:
        """Claim, send and collect acks until stop() is true; unacked batches stay spooled for the next run."""
        self._open()
        poller = zmq.Poller()
        for ln in self.links:
            poller.register(ln.sock, zmq.POLLIN)
            poller.register(ln.mon, zmq.POLLIN)
        next_claim = next_resync = next_report = time.monotonic()
        try:
            while not stop():
                now = time.monotonic()
                if now >= next_claim:
                    # a full claim round means more is waiting: claim again at once
                    next_claim = now if self._claim() >= 10000 else now + self.claim_interval
                if now >= next_resync:
                    self._resync()
                    next_resync = now + self.resync_interval
                self._frames.clear()  # cache lives one round: collectors sending the same seqs share it
                for ln in self.links:
                    self._events(ln)
                    self._timeouts(ln, now)
                    self._send(ln, now)
                poller.poll(max(0, int(1000 * min(self.claim_interval, next_claim - time.monotonic()))))
                for ln in self.links:
                    self._recv(ln)
                if report is not None and now >= next_report:
                    report(self.stats())
                    next_report = now + report_every
        finally:
            self._close()
            if report is not None:
                report(self.stats())

    def idle(self) -> bool:
        """True when everything spooled so far is delivered (nothing pending, nothing incoming): a
        draining shutdown can stop with `stop=lambda: term and (ex.idle() or past_deadline)`."""
        if self.pending:
            return False
        try:
            return not any(n.endswith(".batch") and not n.startswith(".") for n in os.listdir(self.spool.incoming))
        except FileNotFoundError:
            return True

    def stats(self) -> dict:
        """Counters: batches sent/acked/resent/rejected, spool size and drops, each collector's state."""
        now = time.monotonic()
        if now - self._spool_stats_at >= 1.0:
            self._spool_stats = spoolmod.spool_stats(self.spool_dir)
            self._spool_stats_at = now
        sp = self._spool_stats
        per = [ln.stats() for ln in self.links]
        return {"host": self.host, "route": self.route, "sent": sum(p["sent"] for p in per), "acked": self.acked,
                "resent": sum(p["resent"] for p in per), "duplicates_acked": sum(p["duplicates_acked"] for p in per),
                "rejected": self.rejected, "pending": len(self.pending), "gone": self.gone,
                "next_seq": self.spool.next_seq, "spool_bytes": sp.get("spool_bytes", 0),
                "spool_dropped_batches": sp.get("dropped_batches", 0),
                "spool_dropped_records": sp.get("dropped_records", 0),
                "spool_refused_batches": sp.get("refused_batches", 0),
                "spool_refused_records": sp.get("refused_records", 0),
                "spool_write_errors": sp.get("write_errors", 0), "collectors": per}
