"""uvicorn's HTTP/1.1 protocol with a deadline for each request's head and body.

uvicorn (0.55) times out only an idle keep-alive connection, and any byte received resets
even that: a client that opens connections and sends half a request head, or a byte now
and then, holds each one for ever. About a thousand of them use up a process's file
descriptors, and then nobody is served. Here every request must arrive whole (its head
and its body, at most 1 MiB) within the request timeout (DEFAULT_REQUEST_TIMEOUT seconds)
of the connection opening or
of the previous response; a connection that has not is closed. A request being handled,
however long it takes (a login waiting for the database), is never cut.

`usersctl serve --request-timeout` sets the deadline (`USERSCTL_REQUEST_TIMEOUT` for the
worker processes)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_REQUEST_TIMEOUT = 30.0


class DeadlineH11Protocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = float(
            os.environ.get("USERSCTL_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT)
        )
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection gets a deadline of its own

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        # IDLE: the head is not complete; SEND_BODY: the body is not. Anything else is a
        # request the application is handling (or has answered): left alone.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()
