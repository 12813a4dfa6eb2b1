"""The worker: its loops (fetch, execute, settle, upkeep), shutdown and the
watchdog. Only ``Worker`` and ``WorkerConfig`` are public (via ``asyncjobs``)."""
