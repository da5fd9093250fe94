"""capfan.collector: ZeroMQ intake, cross-host flow merge, stores and the query API."""
