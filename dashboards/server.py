"""BokehDisplay: the dashboard served from inside the daemon, on the daemon's asyncio loop.

Loaded by the daemon through the ``operando_monitor.displays`` entry point (see
:func:`monitor.display.load_display` and docs/decisions/0001-dashboard-in-process.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.protocol import Protocol
from bokeh.server.connection import ServerConnection
from bokeh.server.contexts import ApplicationContext
from bokeh.server.server import BaseServer
from bokeh.server.session import ServerSession
from bokeh.server.tornado import BokehTornado
from bokeh.server.util import bind_sockets, create_hosts_allowlist, match_host
from bokeh.server.views.ws import WSHandler
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPServerRequest
from tornado.ioloop import IOLoop
from tornado.web import ErrorHandler

from dashboards.app import make_document
from monitor.config import DashboardSettings
from monitor.errors import MonitorError
from monitor.live import LiveState
from monitor.logutil import RateLimitedLog

log = logging.getLogger(__name__)

APP_PATH = "/"
STOP_TIMEOUT_S = 5.0
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


class _TrackingBokehTornado(BokehTornado):
    """BokehTornado that remembers its websockets, so :meth:`BokehDisplay.stop` can close them."""

    def __init__(self, applications: dict[str, Application], **kwargs: Any) -> None:
        super().__init__(applications, **kwargs)
        self.websockets: dict[ServerConnection, WSHandler] = {}
        self.allowed_hosts: list[str] = []
        """``host:port`` patterns a request's ``Host`` header must match (DNS-rebinding guard)."""
        self.refused_hosts = 0
        self._refusals = RateLimitedLog(log, interval_s=10.0, what="requests")

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        if self.allowed_hosts and not any(match_host(request.host, p) for p in self.allowed_hosts):
            self.refused_hosts += 1
            self._refusals.warn(
                "host", f"dashboard: refused Host {request.host[:80]!r} from {request.remote_ip}"
            )
            return self.get_handler_delegate(request, ErrorHandler, {"status_code": 403})
        return super().find_handler(request, **kwargs)

    def new_connection(
        self,
        protocol: Protocol,
        socket: WSHandler,
        application_context: ApplicationContext,
        session: ServerSession,
    ) -> ServerConnection:
        connection = super().new_connection(protocol, socket, application_context, session)
        self.websockets[connection] = socket
        return connection

    def client_lost(self, connection: ServerConnection) -> None:
        self.websockets.pop(connection, None)
        super().client_lost(connection)


def _url_host(host: str) -> str:
    if host in _WILDCARD_HOSTS:
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


class BokehDisplay:
    """:class:`monitor.display.Display` implementation serving :mod:`dashboards.app`."""

    def __init__(self, live: LiveState, settings: DashboardSettings) -> None:
        self.live = live
        self.settings = settings
        self._server: BaseServer | None = None
        self._http: HTTPServer | None = None
        self._tornado: _TrackingBokehTornado | None = None
        self.port: int | None = None
        self.url: str | None = None

    def _make_document(self, doc: Document) -> None:
        make_document(doc, self.live, self.settings)

    def websocket_origins(self, port: int) -> list[str]:
        """Hosts whose pages may open the dashboard's websocket (``host:port`` patterns)."""
        host = self.settings.host
        origins = [f"localhost:{port}"]
        if host not in _WILDCARD_HOSTS and ":" not in host:  # an IPv6 literal cannot be a pattern
            origins.insert(0, f"{host}:{port}")
        if host in _WILDCARD_HOSTS:
            origins.append(f"{socket.gethostname()}:{port}")
        if self.settings.allow_websocket_origin:
            origins += create_hosts_allowlist(list(self.settings.allow_websocket_origin), port)
        return list(dict.fromkeys(origins))

    async def start(self) -> str:
        """Bind, install the Bokeh server on the running loop, and return its URL."""
        if self._server is not None:
            raise MonitorError("the dashboard is already started")
        asyncio.get_running_loop()  # raises outside a running loop: the server must share it
        host = self.settings.host
        try:
            # Bind first, so that with port 0 the real port is known before the websocket
            # origins are fixed (bokeh's Server computes them from the *requested* port).
            sockets, port = bind_sockets(host, self.settings.port)
        except OSError as exc:
            raise MonitorError(f"dashboard cannot listen on {host}:{self.settings.port}: {exc}") from exc
        url = f"http://{_url_host(host)}:{port}/"
        try:
            tornado_app = _TrackingBokehTornado(
                {APP_PATH: Application(FunctionHandler(self._make_document))},
                extra_websocket_origins=self.websocket_origins(port),
                absolute_url=url,
            )
            tornado_app.allowed_hosts = self.websocket_origins(port)
            http = HTTPServer(tornado_app, xheaders=False)
            http.add_sockets(sockets)
        except BaseException:
            for s in sockets:
                s.close()
            raise
        server = BaseServer(IOLoop.current(), tornado_app, http)
        server.start()
        self._server, self._http, self._tornado = server, http, tornado_app
        self.port, self.url = port, url
        log.info("dashboard at %s (websocket origins: %s)", url, ", ".join(tornado_app.websocket_origins))
        return url

    async def stop(self) -> None:
        """Stop listening, close browser connections, and destroy the sessions' documents."""
        server, http, tornado_app = self._server, self._http, self._tornado
        if server is None or http is None or tornado_app is None:
            return
        self._server = self._http = self._tornado = None
        server.stop()  # unload hooks, server jobs, stop accepting connections
        for ws in list(tornado_app.websockets.values()):
            ws.close(1001, "operando-monitor is shutting down")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while tornado_app.websockets and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if tornado_app.websockets:
            log.warning("dashboard: %d websocket(s) did not close in time", len(tornado_app.websockets))
        try:
            await asyncio.wait_for(http.close_all_connections(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("dashboard: HTTP connections did not close within %.0f s", STOP_TIMEOUT_S)
        for session in tornado_app.get_sessions(APP_PATH):
            if not session.destroyed:
                session.destroy()  # removes the document's periodic callback
        log.info("dashboard stopped")
