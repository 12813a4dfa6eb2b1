"""The Redis layer: connections, the Lua scripts and their typed wrappers, key names,
and the servers used by tests and the demo. Nothing else talks to Redis."""
