"""The producer side: the pool, job handles, result waiting, admin."""
