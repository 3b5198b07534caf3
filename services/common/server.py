"""Serving a gateway app with uvicorn, with the slow-client defences a public port needs.

uvicorn closes idle kept-alive connections but has no deadline for a request's
*headers*: a client that opens a connection and sends half a header line holds
it (and its memory) forever, and hundreds of them exhaust the process. Here:

* a connection must deliver a request's headers within ``header_timeout_s`` of
  connecting (or of the previous answer on a kept-alive connection), else it
  is answered 408 and closed;
* a request's body must arrive within ``body_timeout_s`` of its headers, else
  408 (enforced by the gateway's `Guard`, which reads the body);
* at most ``max_connections`` connections are served at once (uvicorn's
  ``limit_concurrency``: past it, new requests get 503).

A proxy in front (nginx, Envoy, a cloud load balancer) may enforce the same,
but the gateway does not rely on one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cgpo.services.common.errors import RequestTimeoutError
from cgpo.services.common.schemas import ErrorBody, ErrorEnvelope
from cgpo.services.common.settings import ServiceSettings

# Written to the socket before any app runs, so built once here: the gateway's envelope and code.
_TIMEOUT_BODY = ErrorEnvelope(
    error=ErrorBody.of(RequestTimeoutError("the request headers did not arrive in time"))).model_dump_json().encode()
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


def protocol_class(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing connections whose headers do not arrive in time."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same deadline

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # no answer under way
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_config(app: Any, host: str, port: int, settings: ServiceSettings, log_level: str = "info") -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=protocol_class(settings.header_timeout_s),
                          limit_concurrency=settings.max_connections, timeout_keep_alive=5)


def serve(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Run ``app`` (a gateway from `create_app`, which carries its settings) until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port, app.state.settings, log_level)).run()
