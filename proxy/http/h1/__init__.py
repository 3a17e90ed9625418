"""HTTP/1.1 without I/O, for both edges of the proxy (the listener and the upstream client).

* :mod:`.state` — the connection state machine (h11's model: sentinels,
  transition tables, one reuse guard);
* :mod:`.rules` — framing decisions, singleton fields and limits;
* :mod:`.reader` — heads through llhttp (strict), bodies framed and bounded here;
* :mod:`.writer` — heads and chunks as bytes;
* :mod:`.connection` — :class:`ServerConnection` and :class:`ClientConnection`,
  which put them together: bytes in, events out, events in, bytes out.

Nothing here touches a socket, a loop or a clock; the asyncio protocols in
:mod:`proxy.http.protocol` and :mod:`proxy.upstream.client` feed bytes in and
write bytes out.
"""
