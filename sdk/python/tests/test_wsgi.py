"""Plain-function handlers and the WSGI adapter against a fake daemon on a socketpair:
STARTED before the application, answers inline, bodies beyond the response window sent as
WINDOW arrives, streamed request bodies, the PEP 3333 environ, failures -> ABORT."""

from __future__ import annotations

import asyncio
import os
import sys
import unittest
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from keel_worker import protocol as p  # noqa: E402
from keel_worker.demo import wsgi_app as demo_wsgi  # noqa: E402
from keel_worker.protocol import Addr, Kind  # noqa: E402
from keel_worker.worker import Exchange, Worker, _Connection  # noqa: E402
from keel_worker.wsgi import wsgi_handler  # noqa: E402
from test_worker import FakeDaemon, session  # noqa: E402


async def collect(d: FakeDaemon, sid: int, window: int) -> tuple[p.Response, bytes]:
    """Reads one response on ``sid``, granting WINDOW whenever the window runs out; checks
    that STARTED came first and that no byte went beyond the window."""
    f = await d.next()
    assert (f.kind, f.stream_id) == (Kind.STARTED, sid), f
    resp: p.Response | None = None
    body = bytearray()
    left = window
    while True:
        f = await d.next()
        if f.stream_id != sid:
            continue
        if f.kind == Kind.RESPONSE:
            resp = p.decode_response(f)
            chunk, end = resp.body, resp.end_stream
        elif f.kind == Kind.DATA:
            chunk, end = f.payload, f.end_stream
        else:
            raise AssertionError(f"unexpected {f.kind.name}")
        body += chunk
        left -= len(chunk)
        assert left >= 0, "sent beyond the response window"
        if end:
            assert resp is not None
            return resp, bytes(body)
        if left == 0:
            d.send(p.encode_window(sid, window))
            left = window


class PlainFunctionHandlers(unittest.IsolatedAsyncioTestCase):
    async def test_reply_inline_and_beyond_the_window(self) -> None:
        seen: list[int] = []

        def handler(ex: Exchange) -> None:
            seen.append(ex.stream_id)
            n = int(ex.query_string or b"5")
            ex.reply(200, [(b"Content-Type", b"x/y")], b"z" * n)

        d, task = await session(handler, window=1000)
        d.send(p.encode_request(1, b"GET", b"/?5") + p.encode_request(2, b"GET", b"/?2500"))
        # STARTED for both requests of one read come first, in one batch.
        kinds = [(await d.next()) for _ in range(2)]
        self.assertEqual([(f.kind, f.stream_id) for f in kinds],
                         [(Kind.STARTED, 1), (Kind.STARTED, 2)])
        r = p.decode_response(await d.next())
        self.assertEqual((r.stream_id, r.status, r.body, r.end_stream), (1, 200, b"zzzzz", True))
        self.assertIn((b"content-type", b"x/y"), r.headers)
        r = p.decode_response(await d.next())
        self.assertEqual((r.stream_id, len(r.body), r.end_stream), (2, 1000, False))
        got = len(r.body)
        for _ in range(2):
            d.send(p.encode_window(2, 1000))
            f = await d.next()
            self.assertEqual((f.kind, f.stream_id), (Kind.DATA, 2))
            got += len(f.payload)
        self.assertEqual((got, f.end_stream), (2500, True))
        self.assertEqual(seen, [1, 2])
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_returning_an_awaitable_goes_on_in_a_task(self) -> None:
        def handler(ex: Exchange) -> Any:
            body = ex.body_nowait()
            if body is not None:
                ex.reply(200, (), b"inline:" + body)
                return None

            async def later() -> None:
                data = await ex.read_body()
                await ex.respond(200, (), b"task:" + data)
            return later()

        d, task = await session(handler, window=1000)
        d.send(p.encode_request(1, b"POST", b"/", body=b"abc"))
        _, body = await collect(d, 1, 1000)
        self.assertEqual(body, b"inline:abc")
        d.send(p.encode_request(2, b"POST", b"/", body=b"ab", end_stream=False))
        f = await d.next()
        self.assertEqual((f.kind, f.stream_id), (Kind.STARTED, 2))
        f = await d.next()   # the inline bytes consumed: WINDOW for them
        self.assertEqual((f.kind, p.decode_window(f.payload)), (Kind.WINDOW, 2))
        d.send(p.encode_data(2, b"cd", end_stream=True))
        r = p.decode_response(await d.next())
        self.assertEqual((r.body, r.end_stream), (b"task:abcd", True))
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_failures_abort(self) -> None:
        def handler(ex: Exchange) -> None:
            if ex.path == "/raise":
                raise RuntimeError("boom")
            # /none: returns without a response

        d, task = await session(handler)
        d.send(p.encode_request(1, b"GET", b"/raise") + p.encode_request(2, b"GET", b"/none"))
        got: dict[int, int] = {}
        while len(got) < 2:
            f = await d.next()
            if f.kind == Kind.ABORT:
                got[f.stream_id] = p.decode_abort(f.payload)
        self.assertEqual(got, {1: 2, 2: 2})
        # The worker still serves after both.
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_abort_in_the_same_read_skips_the_handler(self) -> None:
        calls: list[int] = []

        def handler(ex: Exchange) -> None:
            calls.append(ex.stream_id)
            ex.reply(200, (), b"ok")

        d, task = await session(handler)
        d.send(p.encode_request(1, b"GET", b"/") + p.encode_abort(1, 1)
               + p.encode_request(2, b"GET", b"/"))
        frames = [await d.next() for _ in range(3)]
        self.assertEqual([(f.kind, f.stream_id) for f in frames],
                         [(Kind.ABORT, 1), (Kind.STARTED, 2), (Kind.RESPONSE, 2)])
        self.assertEqual(calls, [2])
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_handlers_wait_until_started_is_in_the_kernel(self) -> None:
        """With the socket full (bytes left in the transport's buffer), no handler runs
        until the buffer has drained into the kernel."""
        class Transport(asyncio.Transport):
            def __init__(self) -> None:
                super().__init__()
                self.buffered = 0
                self.data = bytearray()

            def write(self, data: Any) -> None:
                self.data += data

            def get_write_buffer_size(self) -> int:
                return self.buffered

            def set_write_buffer_limits(self, high: int | None = None,
                                        low: int | None = None) -> None:
                pass

            def is_closing(self) -> bool:
                return False

        calls: list[int] = []

        def handler(ex: Exchange) -> None:
            calls.append(ex.stream_id)
            ex.reply(200, (), b"ok")

        conn = _Connection(Worker(handler, capacity=4))
        t = Transport()
        conn.connection_made(t)
        conn.data_received(p.encode_welcome(1 << 20, 1000, 4, b"t"))
        t.buffered = 5
        conn.pause_writing()
        conn.data_received(p.encode_request(1, b"GET", b"/"))
        self.assertIn(p.encode_started(1), bytes(t.data))
        self.assertEqual(calls, [])
        t.buffered = 0
        conn.resume_writing()
        self.assertEqual(calls, [1])
        await asyncio.sleep(0)
        kinds = [f.kind for f in p.FrameReader().feed(bytes(t.data))]
        self.assertEqual(kinds, [Kind.HELLO, Kind.STARTED, Kind.RESPONSE])


class WSGI(unittest.IsolatedAsyncioTestCase):
    async def test_environ(self) -> None:
        seen: dict[str, Any] = {}

        def app(environ: dict[str, Any], start: Any) -> list[bytes]:
            seen.update(environ)
            seen["body"] = environ["wsgi.input"].read()
            start("201 Created", [("Content-Type", "text/plain"), ("X-A", "1")])
            return [b"a", b"", b"bc"]

        d, task = await session(wsgi_handler(app), window=1000)
        d.send(p.encode_request(
            4, b"PUT", b"/a%20b/c?x=1&y=%20", body=b"hello", tls=True, http_version=20,
            headers=[(b"host", b"example"), (b"content-type", b"t/x"), (b"x-many", b"1"),
                     (b"x-many", b"2"), (b"content-length", b"5")],
            client=Addr(6, "::1", 5555), local=Addr(4, "10.0.0.1", 8443)))
        r, body = await collect(d, 4, 1000)
        self.assertEqual((r.status, body), (201, b"abc"))
        self.assertEqual(r.headers, [(b"content-type", b"text/plain"), (b"x-a", b"1")])
        expect = {
            "REQUEST_METHOD": "PUT", "SCRIPT_NAME": "", "PATH_INFO": "/a b/c",
            "QUERY_STRING": "x=1&y=%20", "SERVER_PROTOCOL": "HTTP/2", "SERVER_NAME": "10.0.0.1",
            "SERVER_PORT": "8443", "REMOTE_ADDR": "::1", "REMOTE_PORT": "5555",
            "HTTP_HOST": "example", "CONTENT_TYPE": "t/x", "CONTENT_LENGTH": "5",
            "HTTP_X_MANY": "1,2", "wsgi.url_scheme": "https", "wsgi.version": (1, 0),
            "wsgi.multithread": False, "body": b"hello",
        }
        self.assertEqual({k: seen.get(k) for k in expect}, expect)
        # No body: wsgi.input is at its end at once.
        d.send(p.encode_request(5, b"GET", b"/x"))
        r, body = await collect(d, 5, 1000)
        self.assertEqual((r.status, body, seen["body"], seen["QUERY_STRING"]), (201, b"abc", b"", ""))
        self.assertEqual(seen["wsgi.input"].readlines(), [])
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_repeated_fields_give_a_fresh_environ_each_time(self) -> None:
        """Requests with the same fields get the same keys (remembered), in an environ of
        their own: what an app does to one does not reach the next."""
        seen: list[dict[str, Any]] = []

        def app(environ: dict[str, Any], start: Any) -> list[bytes]:
            seen.append({k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONT"))})
            environ["HTTP_HOST"] = "changed"
            environ["HTTP_ADDED"] = "x"
            start("200 OK", [])
            return [b""]

        d, task = await session(wsgi_handler(app), window=1000)
        fields = [(b"host", b"a.example"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
                  (b"content-type", b"t/x")]
        for sid, hdrs in ((1, fields), (3, fields), (5, [(b"host", b"b.example")]),
                          (7, fields)):
            d.send(p.encode_request(sid, b"GET", b"/", headers=hdrs))
            r, _ = await collect(d, sid, 1000)
            self.assertEqual(r.status, 200)
        want = {"HTTP_HOST": "a.example", "HTTP_COOKIE": "a=1; b=2", "CONTENT_TYPE": "t/x"}
        self.assertEqual(seen, [want, want, {"HTTP_HOST": "b.example"}, want])
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_demo_routes_streamed_both_ways(self) -> None:
        d, task = await session(wsgi_handler(demo_wsgi, spool_bytes=1500), window=1000)
        d.send(p.encode_request(1, b"GET", b"/", headers=[(b"host", b"x")]))
        r, body = await collect(d, 1, 1000)
        self.assertEqual((r.status, body), (200, b"Hello from keel"))
        # A 5 000-byte body streamed in (spooled to a file past 1 500 bytes), echoed back
        # through a generator, under a 1 000-byte window both ways.
        payload = bytes(range(250)) * 20
        d.send(p.encode_request(3, b"POST", b"/echo", body=payload[:1000], end_stream=False,
                                headers=[(b"content-type", b"a/b")]))
        sent = 1000
        started = False
        while sent < len(payload):
            f = await d.next()
            if f.kind == Kind.STARTED:
                started = True
            elif f.kind == Kind.WINDOW:
                n = min(p.decode_window(f.payload), len(payload) - sent)
                d.send(p.encode_data(3, payload[sent:sent + n], sent + n == len(payload)))
                sent += n
        self.assertTrue(started)
        got = bytearray()
        left = 1000
        while True:
            f = await d.next()
            if f.kind == Kind.RESPONSE:
                r = p.decode_response(f)
                self.assertIn((b"content-type", b"a/b"), r.headers)
                chunk, end = r.body, r.end_stream
            elif f.kind == Kind.DATA:
                chunk, end = f.payload, f.end_stream
            else:
                continue
            got += chunk
            left -= len(chunk)
            self.assertGreaterEqual(left, 0)
            if end:
                break
            if left == 0:
                d.send(p.encode_window(3, 1000))
                left = 1000
        self.assertEqual(bytes(got), payload)
        # A generator body far beyond the window.
        d.send(p.encode_request(5, b"GET", b"/big?bytes=200000"))
        r, body = await collect(d, 5, 1000)
        self.assertEqual((r.status, len(body)), (200, 200000))
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_app_errors_abort(self) -> None:
        closed: list[bool] = []

        class Body:
            def __iter__(self) -> Any:
                raise RuntimeError("broken iterable")

            def close(self) -> None:
                closed.append(True)

        def app(environ: dict[str, Any], start: Any) -> Any:
            path = environ["PATH_INFO"]
            if path == "/raise":
                raise ValueError("boom")
            if path == "/nostart":
                return [b"x"]
            start("200 OK", [])
            return Body()

        d, task = await session(wsgi_handler(app))
        d.send(p.encode_request(1, b"GET", b"/raise") + p.encode_request(2, b"GET", b"/nostart")
               + p.encode_request(3, b"GET", b"/iter"))
        got: dict[int, int] = {}
        while len(got) < 3:
            f = await d.next()
            self.assertNotEqual(f.kind, Kind.RESPONSE)
            if f.kind == Kind.ABORT:
                got[f.stream_id] = p.decode_abort(f.payload)
        self.assertEqual(got, {1: 2, 2: 2, 3: 2})
        self.assertEqual(closed, [True])
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)

    async def test_max_body(self) -> None:
        def app(environ: dict[str, Any], start: Any) -> list[bytes]:
            start("200 OK", [])
            return [environ["wsgi.input"].read()]

        d, task = await session(wsgi_handler(app, max_body=4), window=1000)
        d.send(p.encode_request(1, b"POST", b"/", body=b"1234"))
        r, body = await collect(d, 1, 1000)
        self.assertEqual((r.status, body), (200, b"1234"))
        d.send(p.encode_request(2, b"POST", b"/", body=b"12345"))
        r, _ = await collect(d, 2, 1000)
        self.assertEqual(r.status, 413)
        d.send(p.encode_drain(1000))
        self.assertEqual(await asyncio.wait_for(task, 5), 0)


if __name__ == "__main__":
    unittest.main()
