"""capfan: distributed packet capture with a zero-copy shared-memory fan-out ring."""

__version__ = "0.1.0"
