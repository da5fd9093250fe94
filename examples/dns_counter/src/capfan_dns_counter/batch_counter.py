"""`dns-batch`: the same counts through the batch API. For a whole batch at once, numpy reads
the headers in place in the ring's arena (no copy) and keeps only DNS query candidates; only
those are decoded in Python. Most traffic is not DNS, so most packets never reach Python.

Handled in the vectorised filter: Ethernet (untagged or one 802.1Q tag) and raw IPv4/IPv6
link types; IPv4 (any header length, not fragmented) and IPv6 without extension headers; UDP,
and TCP segments that start with a whole DNS message. Anything else is not counted (the dpkt
analyzer handles the same cases, so the two agree).
"""
from __future__ import annotations

import numpy as np

from capfan_dns_counter.counter import ETHERNET, RAW_TYPES, DnsCounter
from capfan_dns_counter.dnsname import Undecodable, query_names


class DnsBatch(DnsCounter):
    """DNS queries per query name, candidates picked per batch with numpy."""

    def start(self, ctx) -> None:
        """Validate options; link types are looked up per ring port as packets arrive."""
        super().start(ctx)
        self._linktypes: dict[int, int] = {}
        self._port_array = np.array(self.ports, dtype=np.int64)

    def _l3_start(self, port: np.ndarray) -> np.ndarray:
        """Per packet: 0 for raw IP link types, 14 for Ethernet, -1 for what we do not read."""
        out = np.full(len(port), -1, dtype=np.int64)
        for p in np.unique(port).tolist():
            lt = self._linktypes.get(p)
            if lt is None:
                lt = self._linktypes[p] = self.ctx.linktype(p)
            out[port == p] = 14 if lt == ETHERNET else 0 if lt in RAW_TYPES else -1
        return out

    def on_batch(self, batch) -> None:
        """Filter the batch with numpy, then decode the candidates' question names."""
        d = batch.desc
        n = len(d)
        if n == 0:
            return
        self.counters["packets"] += n
        a = batch.arena
        off = d["off"].astype(np.int64)
        cl = d["caplen"].astype(np.int64)
        last = off + np.maximum(cl, 1) - 1

        def byte(pos):
            """Byte at packet offset pos of every packet (clamped inside the packet)."""
            return a[np.minimum(off + pos, last)].astype(np.int64)

        def u16(pos):
            """Big-endian 16-bit field at packet offset pos of every packet."""
            return byte(pos) << 8 | byte(pos + 1)

        l3 = self._l3_start(d["port"])
        self.counters["other_linktype"] += int((l3 < 0).sum())
        eth = l3 == 14
        etype = np.where(eth, u16(12), 0)
        tagged = eth & (etype == 0x8100)
        l3 = np.where(tagged, 18, l3)
        etype = np.where(tagged, u16(16), etype)
        ver = byte(l3) >> 4
        v4 = (l3 >= 0) & (ver == 4) & (~eth | (etype == 0x0800))
        v6 = (l3 >= 0) & (ver == 6) & (~eth | (etype == 0x86DD))
        ihl = (byte(l3) & 0x0F) * 4
        unfragmented = (u16(l3 + 6) & 0x3FFF) == 0
        v4 &= (ihl >= 20) & unfragmented & (l3 + ihl <= cl)
        v6 &= l3 + 40 <= cl
        proto = np.where(v4, byte(l3 + 9), byte(l3 + 6))
        l4 = l3 + np.where(v4, ihl, 40)
        udp = (v4 | v6) & (proto == 17) & (l4 + 8 <= cl)
        tcp = (v4 | v6) & (proto == 6) & (l4 + 20 <= cl)
        on_port = np.isin(u16(l4), self._port_array) | np.isin(u16(l4 + 2), self._port_array)
        # where the DNS message starts: after the UDP header, or after TCP's header + 2-byte length
        msg = np.where(udp, l4 + 8, l4 + ((byte(l4 + 12) >> 4) * 4) + 2)
        cand = (udp | tcp) & on_port & (msg + 12 <= cl)
        cand &= (byte(msg + 2) & 0x80) == 0          # QR = 0: queries only
        idx = np.flatnonzero(cand)
        if idx.size == 0:
            return
        mv = batch.data
        ts = d["ts_ns"]
        for i, o, m, c, t in zip(idx.tolist(), off[idx].tolist(), msg[idx].tolist(), cl[idx].tolist(),
                                 tcp[idx].tolist()):
            end = o + c
            if t:
                # TCP: the length prefix must announce a message that fits this segment
                size = int.from_bytes(mv[o + m - 2:o + m], "big")
                if m + size > c:
                    continue
                end = o + m + size
            elif v4[i]:
                end = min(end, o + int(l3[i]) + int(u16_at(mv, o + int(l3[i]) + 2)))  # IPv4 total length
            else:
                end = min(end, o + int(l3[i]) + 40 + int(u16_at(mv, o + int(l3[i]) + 4)))  # IPv6 payload
            try:
                names = query_names(bytes(mv[o + m:end]))
            except Undecodable:
                self.counters["undecodable"] += 1
                continue
            if names is not None:
                self.count(names, int(ts[i]))


def u16_at(mv, pos: int) -> int:
    """Big-endian 16-bit integer at pos of a memoryview."""
    return mv[pos] << 8 | mv[pos + 1]
