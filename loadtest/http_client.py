"""A small asyncio HTTP/1.1 client for the OpenAI backend, over `h11` (the protocol library
uvicorn uses): one connection per request, so a cancelled request is a closed connection,
which is what the server sees of a client that goes away.

    async with HttpCall(url, body, headers) as call:     # sends the request
        status = await call.status()
        async for event in call.events():                # server-sent events, as dicts
            ...
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11

_READ_SIZE = 65536


class HttpCall:
    def __init__(self, url: str, body: dict, headers: list[tuple[str, str]]) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._body = json.dumps(body).encode()
        self._headers = [
            ("host", f"{self._host}:{self._port}"),
            ("content-type", "application/json"),
            ("content-length", str(len(self._body))),
            *headers,
        ]
        self._connection = h11.Connection(h11.CLIENT)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._status: int | None = None

    async def __aenter__(self) -> HttpCall:
        context = ssl.create_default_context() if self._tls else None
        self._reader, self._writer = await asyncio.open_connection(
            self._host, self._port, ssl=context
        )
        request = h11.Request(method="POST", target=self._target, headers=self._headers)
        for event in (request, h11.Data(data=self._body), h11.EndOfMessage()):
            self._writer.write(self._connection.send(event))
        await self._writer.drain()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def _next_event(self) -> h11.Event:
        assert self._reader is not None
        while True:
            event = self._connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self._reader.read(_READ_SIZE)
            self._connection.receive_data(data)  # b"" tells it the connection closed

    async def status(self) -> int:
        """The response's status code (after its headers arrived)."""
        if self._status is None:
            event = await self._next_event()
            if not isinstance(event, h11.Response):
                raise ConnectionError(f"the server sent no response ({type(event).__name__})")
            self._status = event.status_code
        return self._status

    async def body(self) -> bytes:
        chunks = []
        while not isinstance(event := await self._next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
        return b"".join(chunks)

    async def events(self) -> AsyncIterator[dict | str]:
        """Each server-sent event's data: a decoded JSON object, or "[DONE]"."""
        buffer = b""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.EndOfMessage):
                return
            if not isinstance(event, h11.Data):
                continue
            buffer += bytes(event.data)
            *complete, buffer = buffer.split(b"\n\n")
            for raw in complete:
                for line in raw.split(b"\n"):
                    if line.startswith(b"data: "):
                        data = line[6:].decode()
                        yield data if data == "[DONE]" else json.loads(data)
