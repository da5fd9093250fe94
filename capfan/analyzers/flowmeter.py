"""The `flowmeter` analyzer: bidirectional flow records (stream "flows", FLOW_DTYPE) from a
ring, metered in C by capfan.flowtable.FlowTable."""
from __future__ import annotations

from capfan.analyzers import Analyzer, Option
from capfan.flowtable import FlowTable, parse_decap


class FlowMeter(Analyzer):
    """Meters every packet of the ring into flows; emits ended flows on "flows"."""

    options = {
        "idle_timeout": Option(float, 60.0, "seconds without packets before a flow ends (0 = never)"),
        "active_timeout": Option(float, 300.0, "a longer flow is cut into records this often (0 = never)"),
        "end_linger": Option(float, 1.0, "seconds a flow still absorbs packets after FIN both ways / RST"),
        "max_flows": Option(int, 1_048_576, "flows kept at once; when full the least recently seen ends early"),
        "max_fragments": Option(int, 65536, "first fragments remembered to place later fragments"),
        "fragment_timeout": Option(float, 30.0, "seconds a first fragment's ports are remembered"),
        "decap": Option(parse_decap, (), "meter inner headers of: comma list of mpls, gre, vxlan, or none"),
    }
    policy = "reliable"

    def start(self, ctx) -> None:
        """Build the flow table from the validated config."""
        self.ctx = ctx
        c = ctx.config
        self.table = FlowTable(max_flows=c["max_flows"], idle_timeout=c["idle_timeout"],
                               active_timeout=c["active_timeout"], end_linger=c["end_linger"],
                               fragment_timeout=c["fragment_timeout"], max_fragments=c["max_fragments"],
                               decap=c["decap"])

    def _emit(self) -> None:
        records = self.table.drain()
        if len(records):
            self.ctx.emit("flows", records)

    def on_batch(self, batch) -> None:
        """Meter the batch in place and ship the flows it ended."""
        self.table.add_batch(batch)
        self._emit()

    def on_tick(self, now_ns: int) -> None:
        """Advance the clock with wall time: idle flows end on a quiet link."""
        self.table.tick(now_ns)
        self._emit()

    def stop(self) -> None:
        """End every flow and ship the records."""
        self.table.flush()
        self._emit()
        self.table.close()

    def stats(self) -> dict:
        """The flow table's counters (empty once stopped)."""
        t = getattr(self, "table", None)
        return t.stats() if t is not None and t._fm is not None else {}
