"""capfan.agents: the per-host sensor supervisor (capture workers, analyzers, exporter)."""
