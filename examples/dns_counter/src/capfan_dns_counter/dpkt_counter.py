"""`dns-dpkt`: the straightforward per-packet analyzer. Every packet of every batch is parsed
with dpkt (Ethernet, or raw IPv4/IPv6 link types), then DNS over UDP or TCP is decoded when a
port matches. Simple, and fine up to some tens of thousands of packets per second."""
from __future__ import annotations

import struct

import dpkt

from capfan_dns_counter.counter import ETHERNET, RAW_TYPES, DnsCounter

_ERRORS = (dpkt.UnpackError, IndexError, ValueError, struct.error)


class DnsDpkt(DnsCounter):
    """DNS queries per query name, one dpkt parse per packet."""

    def start(self, ctx) -> None:
        """Validate options; link types are looked up per ring port as packets arrive."""
        super().start(ctx)
        self._linktypes: dict[int, int] = {}

    def on_batch(self, batch) -> None:
        """Parse every packet; count the questions of DNS queries."""
        ports = batch.desc["port"].tolist()
        for p in set(ports) - self._linktypes.keys():
            self._linktypes[p] = self.ctx.linktype(p)
        kinds = {self._linktypes[p] for p in set(ports)}
        if len(kinds) == 1:
            # one link type (the usual case): plain iteration, which for a lossy consumer also
            # leaves out packets overwritten while being read
            lt = kinds.pop()
            packets = ((ts, frame, lt) for ts, frame in batch)
        else:
            ts_ns = batch.desc["ts_ns"].tolist()
            packets = ((ts_ns[i], batch.packet(i), self._linktypes[p]) for i, p in enumerate(ports))
        for ts, frame, lt in packets:
            self.counters["packets"] += 1
            try:
                names = self._query_names(bytes(frame), lt)
            except _ERRORS:
                self.counters["undecodable"] += 1
                continue
            if names is not None:
                self.count(names, ts)

    def _query_names(self, frame: bytes, lt: int) -> list[str] | None:
        """Question names if the frame holds a DNS query on one of our ports, else None."""
        if lt == ETHERNET:
            ip = dpkt.ethernet.Ethernet(frame).data
        elif lt in RAW_TYPES and frame:
            version = frame[0] >> 4
            ip = dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame) if version == 6 else None
        else:
            self.counters["other_linktype"] += 1
            return None
        if isinstance(ip, dpkt.ip.IP):
            if ip.mf or ip.offset:
                return None   # fragments are not reassembled (the batch analyzer skips them too)
        elif not isinstance(ip, dpkt.ip6.IP6):
            return None
        l4 = ip.data
        if isinstance(l4, dpkt.udp.UDP):
            payload = l4.data
        elif isinstance(l4, dpkt.tcp.TCP):
            # DNS over TCP: a 2-byte length, then the message; only messages that start in
            # this segment and fit in it are decoded (no stream reassembly)
            if len(l4.data) < 2:
                return None
            n = int.from_bytes(l4.data[:2], "big")
            payload = l4.data[2:2 + n]
            if len(payload) < n:
                return None
        else:
            return None
        if l4.sport not in self.ports and l4.dport not in self.ports:
            return None
        msg = dpkt.dns.DNS(bytes(payload))
        if msg.qr != dpkt.dns.DNS_Q:
            return None
        return [q.name or "<Root>" for q in msg.qd]
