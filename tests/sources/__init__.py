"""Tests of the capture sources (pcap replay, AF_PACKET, AF_XDP)."""
