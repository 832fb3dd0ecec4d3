"""A stand-in for the Supabase API gateway: one address, routed by path.

A project has one URL; ``/realtime/v1/…`` reaches Realtime and ``/functions/v1/…`` the
Edge Functions. The stand-ins for those listen on ports of their own, so this forwards
each TCP connection, after reading its request line, to the one its path names.
"""

from __future__ import annotations

import asyncio
import contextlib


class GatewayStandIn:
    def __init__(self, routes: dict[str, str]) -> None:
        # path prefix → "http://host:port" of the stand-in serving it
        self.routes = {
            prefix: target.removeprefix("http://").rsplit(":", 1)
            for prefix, target in routes.items()
        }
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> GatewayStandIn:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            parts = request_line.split()
            path = parts[1].decode() if len(parts) >= 2 else ""
            target = next(
                (hp for prefix, hp in self.routes.items() if path.startswith(prefix)), None
            )
            if target is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(target[0], int(target[1]))
            up_writer.write(request_line)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
