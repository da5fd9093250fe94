"""Example capfan analyzers counting DNS queries per query name.

``dns-dpkt`` (DnsDpkt) parses every packet with dpkt; ``dns-batch`` (DnsBatch) picks
candidate packets for a whole batch with numpy and decodes only those. Both count the same
thing and emit the same records on the ``dns`` stream.
"""
from capfan_dns_counter.batch_counter import DnsBatch
from capfan_dns_counter.dpkt_counter import DnsDpkt

__all__ = ["DnsBatch", "DnsDpkt"]
