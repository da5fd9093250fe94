"""Exception types. Every message says what went wrong and what the user can do about it."""


class CapfanError(Exception):
    """Base of all capfan errors; the CLI prints these without a traceback."""


class RingError(CapfanError):
    """A shared-memory ring operation failed."""


class RingExists(RingError):
    """The ring already exists."""


class RingNotFound(RingError):
    """No ring of that name."""


class RingFormatError(RingError):
    """The file is not a ring this capfan understands."""


class RingBusy(RingError):
    """The ring already has a live producer, or the consumer name is taken by a live process."""


class NoConsumerSlot(RingError):
    """Every consumer slot of the ring is in use."""


class RingTimeout(RingError):
    """A wait on the ring timed out."""


class ConfigError(CapfanError):
    """A configuration value is missing or invalid; `key` names it."""

    def __init__(self, key, message):
        self.key = key
        # key None: the file itself (missing, unreadable, not TOML); the message names it
        super().__init__(message if key is None else f"config key '{key}': {message}")


class SourceError(CapfanError):
    """A capture source could not be opened or failed while capturing."""


class SourceNotSupported(SourceError):
    """The backend is not compiled in, or the driver/kernel does not support the request."""


class CorruptCapture(SourceError):
    """A capture file is corrupt or truncated; the message names the byte offset."""


class CapturePermissionError(SourceError):
    """Capturing needs a privilege this process lacks (CAP_NET_RAW, CAP_NET_ADMIN, CAP_BPF)."""


class RecorderError(CapfanError):
    """The recorder could not create, write or rename a capture file."""


class WireError(CapfanError):
    """A wire message is malformed, oversized or of an unsupported version; the message says
    what and where. `kind` is "malformed", "oversized" or "version" (what a collector counts);
    `host` and `seq` are set when the header was readable far enough to know them, so the
    sender can be told which batch was refused."""

    def __init__(self, message, kind: str = "malformed", host: str | None = None, seq: int | None = None):
        self.kind = kind
        self.host = host
        self.seq = seq
        super().__init__(message)


class TuneError(CapfanError):
    """Host tuning (`capfan tune`, `capfan doctor`) cannot read or plan a setting."""
