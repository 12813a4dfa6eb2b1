"""A server's address in a URL that lists several (``redis+sentinel://``,
``redis+cluster://``): ``host``, ``host:port`` or ``[ipv6]:port``."""

from __future__ import annotations

from urllib.parse import unquote


def parse_address(text: str, *, default_port: int, what: str, example: str
                  ) -> tuple[str, int]:
    """``text`` as (host, port); ``default_port`` when it names none. Raises ``ValueError``
    in one line naming ``what`` the address is of ("Sentinel", "cluster node"), and, for a
    missing host, how to list them (``example``)."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"bad {what} address {text!r}")
        port = port[1:]
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"a {what} address has no host: list them as {example}")
    if not port:
        return unquote(host), default_port
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port {port!r} for {what} {host!r}")
    return unquote(host), int(port)
