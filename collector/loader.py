"""The loader: moves acknowledged batches from the collector's journal into the store.

The intake acknowledges a batch once it is in the journal and synced (durable); this thread
reads the journal from the store's checkpoint and stores the batches in groups, one transaction
per group with the new checkpoint in the same transaction. After a crash the loader resumes at
the checkpoint: nothing acknowledged is lost and nothing is loaded twice (a batch resent by an
agent whose acknowledgement got lost is recognised by (host, seq) and counted as a duplicate).
"""
from __future__ import annotations

import logging
import threading
import time

from capfan import wire

from .store import StoreError, StoreUnavailable

log = logging.getLogger("capfan.collect.loader")
GROUP_MESSAGES = 256          # batches per store transaction at most
GROUP_BYTES = 64 << 20
RELEASE_EVERY_S = 5.0


class Loader:
    """Journal -> store, in a thread of its own."""

    def __init__(self, store, journal, max_bytes: int = wire.MAX_MESSAGE_BYTES):
        self.store = store
        self.journal = journal
        self.max_bytes = max_bytes
        self.position = store.checkpoint()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts = {"loaded_batches": 0, "loaded_records": 0, "duplicates": 0, "load_errors": 0,
                        "load_rejected": 0, "transactions": 0}
        self._hosts: dict[str, dict] = {}
        self.error: Exception | None = None

    def start(self) -> None:
        """Start loading in the background."""
        self._thread = threading.Thread(target=self._run, name="capfan-loader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Load everything the journal holds (synced), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the loader did not finish within %g s; the rest loads on the next start", timeout)

    def counters(self) -> dict:
        """Loaded batches/records, duplicates, errors, the checkpoint and per-host totals."""
        with self._lock:
            out = dict(self._counts)
            out["hosts"] = {h: dict(v) for h, v in self._hosts.items()}
        out["checkpoint"] = list(self.position) if self.position else None
        return out

    def _run(self) -> None:
        last_release = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            try:
                n = self.load_once()
            except Exception as e:  # noqa: BLE001 - a store failure: retry, never drop acked data
                self.error = e
                with self._lock:
                    self._counts["load_errors"] += 1
                log.error("loading the journal into the store failed (retrying in 1 s): %s", e)
                if stopping:
                    return
                time.sleep(1.0)
                continue
            if time.monotonic() - last_release > RELEASE_EVERY_S and self.position:
                self.journal.release(tuple(self.position))
                last_release = time.monotonic()
            if n == 0:
                if stopping:
                    return
                self.journal.wait(0.2)

    def load_once(self) -> int:
        """Store the next group of journaled batches; how many batches were read."""
        msgs = self.journal.read(tuple(self.position) if self.position else None, max_messages=GROUP_MESSAGES,
                                 max_bytes=GROUP_BYTES)
        if not msgs:
            return 0
        batches = []
        for _pos, _next, frames in msgs:
            # validated by the intake before it was journaled; decoding cannot fail short of disk rot,
            # which the journal's CRC would have caught
            b = wire.decode(frames, self.max_bytes)
            batches.append((b.host, b.seq, b.stream, b.source, b.records))
        checkpoint = tuple(msgs[-1][0])  # the last loaded record: read(since) resumes after it
        try:
            fresh = self.store.ingest_many(batches, checkpoint=checkpoint)
        except StoreUnavailable:
            raise  # the server is away: retry the whole group later, nothing is set aside
        except (StoreError, TypeError, ValueError):
            # content the store refuses (the intake checks for it; this is the safety net): load
            # one by one and set aside what cannot be stored, so one batch never blocks the rest
            fresh = [self._load_alone(b, tuple(m[0])) for b, m in zip(batches, msgs)]
        self.position = checkpoint
        with self._lock:
            self._counts["transactions"] += 1
            for (host, _seq, _stream, _source, recs), new in zip(batches, fresh):
                h = self._hosts.setdefault(host, {"batches": 0, "records": 0, "duplicates": 0})
                if new is None:
                    continue  # set aside, counted in load_rejected
                if new:
                    self._counts["loaded_batches"] += 1
                    self._counts["loaded_records"] += len(recs)
                    h["batches"] += 1
                    h["records"] += len(recs)
                else:
                    self._counts["duplicates"] += 1
                    h["duplicates"] += 1
        return len(msgs)

    def _load_alone(self, batch, position) -> bool | None:
        """Store one batch with its own checkpoint; a batch the store refuses is counted, logged
        and stepped over (None)."""
        try:
            return self.store.ingest_many([batch], checkpoint=position)[0]
        except StoreUnavailable:
            raise
        except (StoreError, TypeError, ValueError) as e:
            log.error("batch %s/%d cannot be stored and is set aside: %s", batch[0], batch[1], e)
            with self._lock:
                self._counts["load_rejected"] += 1
            self.store.ingest_many([], checkpoint=position)
            return None
