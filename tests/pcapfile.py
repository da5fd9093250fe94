"""Test-only classic pcap reading/writing (frames only), shared by the capture tests."""
import struct

_ENDIAN = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}


def read_pcap(path):
    """Frames of a classic pcap file (either byte order, µs or ns)."""
    with open(path, "rb") as f:
        data = f.read()
    endian = _ENDIAN[data[:4]]
    off, frames = 24, []
    while off + 16 <= len(data):
        _sec, _frac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def write_pcap(path, frames, gap_us=1_000_000):
    """Ethernet pcap (µs) holding frames, gap_us apart from 1,700,000,000 s."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            t = i * gap_us
            f.write(struct.pack("<IIII", 1_700_000_000 + t // 1_000_000, t % 1_000_000, len(fr), len(fr)) + fr)
