"""The worker against a fake daemon on a socketpair: handshake, STARTED before the app,
inline and streamed responses within the window, request-body WINDOW grants, PING/PONG from
the read loop while handlers are busy, ABORT, DRAIN."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from keel_worker import protocol as p  # noqa: E402
from keel_worker.asgi import asgi_handler  # noqa: E402
from keel_worker.demo import app as demo_app  # noqa: E402
from keel_worker.protocol import Kind  # noqa: E402
from keel_worker.worker import Exchange, Worker  # noqa: E402


class FakeDaemon:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r = reader
        self.w = writer
        self.frames = p.FrameReader(p.MAX_PAYLOAD_LIMIT)
        self.pending: list[p.Frame] = []

    async def next(self) -> p.Frame:
        while not self.pending:
            data = await asyncio.wait_for(self.r.read(65536), 5)
            if not data:
                raise EOFError
            self.pending += self.frames.feed(data)
        return self.pending.pop(0)

    async def until(self, kind: Kind, sid: int | None = None) -> p.Frame:
        while True:
            f = await self.next()
            if f.kind == kind and (sid is None or f.stream_id == sid):
                return f

    def send(self, b: bytes) -> None:
        self.w.write(b)


async def session(handler: object, window: int = 1000, capacity: int = 4) -> tuple[
        FakeDaemon, asyncio.Task[int]]:
    a, b = socket.socketpair()
    worker = Worker(handler, capacity=capacity)  # type: ignore[arg-type]
    task = asyncio.get_running_loop().create_task(worker.run(a))
    r, w = await asyncio.open_connection(sock=b)
    d = FakeDaemon(r, w)
    hello = await d.next()
    assert hello.kind == Kind.HELLO
    h = p.decode_hello(hello.payload)
    assert (h.version, h.capacity, h.pid) == (1, capacity, os.getpid())
    d.send(p.encode_welcome(1 << 20, window, capacity, b"test"))
    return d, task


class WorkerTests(unittest.IsolatedAsyncioTestCase):
    async def test_demo_get_started_then_inline_response(self) -> None:
        d, task = await session(asgi_handler(demo_app))
        d.send(p.encode_request(3, b"GET", b"/", headers=[(b"host", b"x")]))
        f = await d.next()
        self.assertEqual((f.kind, f.stream_id, f.payload), (Kind.STARTED, 3, b""))
        r = p.decode_response(await d.next())
        self.assertEqual((r.status, r.body, r.end_stream), (200, b"Hello from keel", True))
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_echo_streams_within_windows(self) -> None:
        d, task = await session(asgi_handler(demo_app), window=1000)
        body = bytes(range(256)) * 10  # 2 560 bytes: more than one window each way
        d.send(p.encode_request(1, b"POST", b"/echo", end_stream=False, body=body[:1000],
                                headers=[(b"content-type", b"a/b")]))
        sent = 1000
        got = bytearray()
        grants = 0
        resp_window = 1000
        ended = False
        while not ended:
            f = await d.next()
            if f.kind == Kind.WINDOW:
                inc = p.decode_window(f.payload)
                grants += inc
                n = min(inc, len(body) - sent)
                if n:
                    d.send(p.encode_data(1, body[sent:sent + n], sent + n == len(body)))
                    sent += n
            elif f.kind == Kind.RESPONSE:
                r = p.decode_response(f)
                self.assertIn((b"content-type", b"a/b"), r.headers)
                got += r.body
                resp_window -= len(r.body)
                ended = r.end_stream
            elif f.kind == Kind.DATA:
                got += f.payload
                resp_window -= len(f.payload)
                ended = f.end_stream
            if f.kind in (Kind.RESPONSE, Kind.DATA):
                self.assertGreaterEqual(resp_window, 0, "sent beyond the response window")
                if resp_window == 0 and not ended:
                    d.send(p.encode_window(1, 1000))
                    resp_window += 1000
        self.assertEqual(bytes(got), body)
        self.assertLessEqual(grants, len(body))
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_ping_answered_while_handlers_busy_and_abort(self) -> None:
        gate = asyncio.Event()
        cancelled = asyncio.Event()

        async def busy(ex: Exchange) -> None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        d, task = await session(busy, capacity=2)
        d.send(p.encode_request(1, b"GET", b"/") + p.encode_request(2, b"GET", b"/"))
        await d.until(Kind.STARTED, 2)
        d.send(p.encode_ping(0x0102030405060708))
        f = await d.until(Kind.PONG)
        self.assertEqual(f.payload, bytes(range(1, 9)))
        d.send(p.encode_abort(1, 1))
        f = await d.until(Kind.ABORT, 1)
        self.assertEqual(p.decode_abort(f.payload), 2)
        await asyncio.wait_for(cancelled.wait(), 5)
        d.send(p.encode_drain(1000))           # stream 2 still open: not done yet
        await asyncio.sleep(0.05)
        self.assertFalse(task.done())
        gate.set()                              # returns without responding -> ABORT(2)
        f = await d.until(Kind.ABORT, 2)
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_handler_exception_aborts_and_bad_frame_exits(self) -> None:
        async def boom(ex: Exchange) -> None:
            raise RuntimeError("boom")

        d, task = await session(boom)
        d.send(p.encode_request(7, b"GET", b"/"))
        f = await d.until(Kind.ABORT, 7)
        self.assertEqual(p.decode_abort(f.payload), 2)
        d.send(p.encode_frame(Kind.WINDOW, 7, b"\x00\x00\x00\x00"))  # WINDOW 0: malformed
        self.assertEqual(await asyncio.wait_for(task, 5), 1)

    async def test_eof_ends_the_worker(self) -> None:
        d, task = await session(asgi_handler(demo_app))
        d.w.close()
        self.assertEqual(await asyncio.wait_for(task, 5), 0)


if __name__ == "__main__":
    unittest.main()
