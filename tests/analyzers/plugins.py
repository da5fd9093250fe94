"""Analyzers used only by the tests, loaded as `tests.analyzers.plugins:Name`."""
import json
import os

import numpy as np

from capfan.analyzers import Analyzer, Option


class Recording(Analyzer):
    """Counts what the runner hands it; writes its life cycle to -o log=FILE at stop."""

    options = {"log": Option(str, "", "file to write the call counts to at stop"),
               "fail_after": Option(int, 0, "raise in on_batch after this many packets (0 = never)"),
               "stop_sleep": Option(float, 0.0, "seconds stop() takes (a slow flush)")}

    def start(self, ctx):
        self.ctx = ctx
        self.calls = {"start": 1, "on_batch": 0, "on_tick": 0, "stop": 0}
        self.packets = 0
        self.seqs = []

    def on_batch(self, batch):
        self.calls["on_batch"] += 1
        d = batch.desc
        self.packets += len(d)
        self.seqs.extend(d["seq"].tolist())
        if self.ctx.config["fail_after"] and self.packets >= self.ctx.config["fail_after"]:
            raise RuntimeError("plugin bug on purpose")

    def on_tick(self, now_ns):
        self.calls["on_tick"] += 1

    def stop(self):
        self.calls["stop"] += 1
        if self.ctx.config["stop_sleep"]:
            import time
            time.sleep(self.ctx.config["stop_sleep"])
        self.ctx.emit("seen", np.array([(self.packets,)], dtype=[("packets", "<u8")]))
        if self.ctx.config["log"]:
            with open(self.ctx.config["log"], "w") as f:
                json.dump({"calls": self.calls, "packets": self.packets, "seqs": self.seqs,
                           "config": self.ctx.config, "pid": os.getpid()}, f)

    def stats(self):
        return {"packets": self.packets}
