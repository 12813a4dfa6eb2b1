"""What the command line needs besides ``asyncjobs.cli``: operations, rendering,
the demo, loading a worker, log set-up."""
