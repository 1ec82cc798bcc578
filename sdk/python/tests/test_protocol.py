"""Codec round trips against the worked example of docs/worker-protocol.md §13, frame-level
validation (§4.1) and window accounting (§8)."""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from keel_worker import protocol as p  # noqa: E402
from keel_worker.protocol import Addr, Kind, ProtocolError  # noqa: E402


def hx(text: str) -> bytes:
    """Bytes from a §13 dump: lines of `offset: hex hex ...`."""
    out = bytearray()
    for line in text.strip().splitlines():
        out += bytes.fromhex(line.split(":", 1)[1])
    return bytes(out)


HELLO = hx("""
0000: 00 00 00 14 01 00 00 00 00 00 00 00 00 01 00 00
0010: 10 92 00 00 00 08 00 10 00 00 00 04 64 65 6d 6f
""")
WELCOME = hx("""
0000: 00 00 00 13 02 00 00 00 00 00 00 00 00 01 00 10
0010: 00 00 00 04 00 00 00 00 00 04 00 03 61 70 70
""")
REQUEST = hx("""
0000: 00 00 00 2f 03 01 00 00 00 00 00 01 0b 00 00 00
0010: 75 30 00 03 47 45 54 00 01 2f 00 00 04 7f 00 00
0020: 01 9c 40 04 7f 00 00 01 1f 90 00 01 00 04 68 6f
0030: 73 74 00 07 65 78 61 6d 70 6c 65
""")
RESPONSE = hx("""
0000: 00 00 00 28 06 01 00 00 00 00 00 01 00 c8 00 00
0010: 00 00 00 00 01 00 0c 63 6f 6e 74 65 6e 74 2d 74
0020: 79 70 65 00 0a 74 65 78 74 2f 70 6c 61 69 6e 48
0030: 65 6c 6c 6f
""")
END_1 = bytes.fromhex("00 00 00 00 04 01 00 00 00 00 00 01")
STARTED_1 = bytes.fromhex("00 00 00 00 05 00 00 00 00 00 00 01")


def one(data: bytes, max_payload: int = p.DEFAULT_MAX_PAYLOAD) -> p.Frame:
    frames = p.FrameReader(max_payload).feed(data)
    assert len(frames) == 1, frames
    return frames[0]


class WorkedExample(unittest.TestCase):
    def test_sizes(self) -> None:
        self.assertEqual([len(HELLO), len(WELCOME), len(REQUEST), len(RESPONSE)],
                         [32, 31, 59, 52])

    def test_hello(self) -> None:
        self.assertEqual(p.encode_hello(4242, 8, 1 << 20, b"demo"), HELLO)
        f = one(HELLO)
        self.assertEqual(f.kind, Kind.HELLO)
        self.assertEqual(p.decode_hello(f.payload), p.Hello(1, 4242, 8, 1 << 20, b"demo"))

    def test_welcome(self) -> None:
        f = one(WELCOME)
        self.assertEqual((f.kind, f.flags, f.stream_id), (Kind.WELCOME, 0, 0))
        w = p.decode_welcome(f.payload)
        self.assertEqual(w, p.Welcome(1, 1 << 20, 262144, 4, b"app"))
        self.assertEqual(p.encode_welcome(1 << 20, 262144, 4, b"app"), WELCOME)
        # Trailing bytes after `pool` are ignored (room for future fields).
        self.assertEqual(p.decode_welcome(f.payload + b"\x01\x02"), w)

    def test_request(self) -> None:
        f = one(REQUEST)
        self.assertTrue(f.end_stream)
        r = p.decode_request(f)
        self.assertEqual(r.stream_id, 1)
        self.assertEqual(r.http_version, 11)
        self.assertFalse(r.tls)
        self.assertEqual(r.deadline_ms, 30000)
        self.assertEqual((r.method, r.target, r.server_name), (b"GET", b"/", b""))
        self.assertEqual(r.client, Addr(4, "127.0.0.1", 40000))
        self.assertEqual(r.local, Addr(4, "127.0.0.1", 8080))
        self.assertEqual(r.headers, [(b"host", b"example")])
        self.assertEqual(r.body, b"")
        again = p.encode_request(1, b"GET", b"/", headers=[(b"host", b"example")],
                                 deadline_ms=30000, client=r.client, local=r.local)
        self.assertEqual(again, REQUEST)

    def test_response(self) -> None:
        enc = p.encode_response(1, 200, [(b"content-type", b"text/plain")], b"Hello")
        self.assertEqual(enc, RESPONSE)
        r = p.decode_response(one(RESPONSE))
        self.assertEqual((r.status, r.cache, r.ttl, r.body, r.end_stream),
                         (200, 0, 0, b"Hello", True))

    def test_end_and_started(self) -> None:
        self.assertEqual(p.encode_data(1, b"", True), END_1)
        self.assertEqual(p.encode_started(1), STARTED_1)
        f = one(STARTED_1)
        p.check_started(f.payload)


class Codec(unittest.TestCase):
    def test_byte_by_byte(self) -> None:
        stream = WELCOME + REQUEST + END_1
        r = p.FrameReader()
        frames: list[p.Frame] = []
        for i in range(len(stream)):
            frames += r.feed(stream[i:i + 1])
        self.assertEqual([f.kind for f in frames], [Kind.WELCOME, Kind.REQUEST, Kind.DATA])
        self.assertEqual(r.buffered, 0)

    def test_oversized_refused_from_header_alone(self) -> None:
        hdr = bytes.fromhex("00 10 00 01 04 00 00 00 00 00 00 01")  # 1 MiB + 1
        with self.assertRaisesRegex(ProtocolError, "oversized"):
            p.FrameReader().feed(hdr)
        self.assertEqual(len(p.FrameReader(2 << 20).feed(hdr)), 0)  # waits for payload
        self.assertEqual(p.clamp_max_payload(1 << 30), 16 << 20)

    def test_unknown_kind_and_stream_ids(self) -> None:
        with self.assertRaisesRegex(ProtocolError, "unknown"):
            p.FrameReader().feed(bytes.fromhex("00000000 0d 00 0000 00000001"))
        with self.assertRaisesRegex(ProtocolError, "stream id 0"):
            p.FrameReader().feed(bytes.fromhex("00000000 04 00 0000 00000000"))
        with self.assertRaisesRegex(ProtocolError, "must be 0"):
            p.FrameReader().feed(p.encode_ping(7)[:8] + b"\x00\x00\x00\x02" + b"\x00" * 8)

    def test_reserved_bits_ignored(self) -> None:
        data = bytearray(END_1)
        data[5] |= 0xFE
        data[6:8] = b"\xff\xff"
        f = one(bytes(data))
        self.assertTrue(f.end_stream)

    def test_fixed_sizes(self) -> None:
        self.assertEqual(p.decode_window(b"\x00\x00\x01\x00"), 256)
        for bad in (b"\x00\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x00\x01\x00"):
            with self.assertRaises(ProtocolError):
                p.decode_window(bad)
        with self.assertRaises(ProtocolError):
            p.decode_nonce(b"\x00" * 9)
        with self.assertRaises(ProtocolError):
            p.decode_abort(b"\x00" * 3)
        with self.assertRaises(ProtocolError):
            p.check_started(b"\x00")
        self.assertEqual(p.decode_nonce(one(p.encode_ping(2**64 - 1)).payload), 2**64 - 1)
        self.assertEqual(p.encode_pong(b"12345678")[12:], b"12345678")
        self.assertEqual(p.decode_drain(one(p.encode_drain(90000)).payload), 90000)
        self.assertEqual(p.decode_abort(one(p.encode_abort(3, 2)).payload), 2)

    def test_request_validation(self) -> None:
        def req(**kw: object) -> p.Frame:
            return one(p.encode_request(5, **kw))  # type: ignore[arg-type]

        good = p.decode_request(req(method=b"PATCH", target=b"/a?b=c",
                                    headers=[(b"x", b"\tv\x80")], body=b"xyz",
                                    end_stream=False, tls=True, http_version=20,
                                    client=Addr(6, "::1", 1), local=Addr(0)))
        self.assertEqual((good.body, good.end_stream, good.tls), (b"xyz", False, True))
        self.assertEqual(good.client.as_tuple(), ("::1", 1))
        self.assertIsNone(good.local.as_tuple())
        for kw in ({"method": b"G T", "target": b"/"}, {"method": b"", "target": b"/"},
                   {"method": b"GET", "target": b"/a b"}, {"method": b"GET", "target": b""},
                   {"method": b"GET", "target": b"/\x7f"},
                   {"method": b"GET", "target": b"/", "http_version": 12}):
            with self.assertRaises(ProtocolError, msg=repr(kw)):
                p.decode_request(req(**kw))
        # Header checks (built by hand: the encoder refuses them too).
        raw = bytearray(p.encode_request(5, b"GET", b"/", headers=[(b"a", b"b")]))
        raw[raw.rindex(b"b")] = 0x0A
        with self.assertRaisesRegex(ProtocolError, "CR, LF or NUL"):
            p.decode_request(one(bytes(raw)))
        with self.assertRaises(ValueError):
            p.encode_request(5, b"GET", b"/", headers=[(b"a:b", b"c")])
        # A field running past the payload.
        truncated = bytearray(REQUEST)
        truncated[3] -= 10
        with self.assertRaises(ProtocolError):
            p.decode_request(one(bytes(truncated[:-10])))
        # Bad address family.
        bad = bytearray(REQUEST)
        bad[12 + 6 + 5 + 3 + 2] = 5
        with self.assertRaisesRegex(ProtocolError, "family"):
            p.decode_request(one(bytes(bad)))

    def test_repeated_header_blocks(self) -> None:
        """A client's repeated fields are decoded from the remembered block: the same
        headers (a list of its own each time), the body never taken for fields, and a bad
        block refused every time."""
        fields = [(b"host", b"h.example"), (b"accept", b"*/*"), (b"cookie", b"a=1")]
        first = p.decode_request(one(p.encode_request(1, b"GET", b"/", headers=fields)))
        again = p.decode_request(one(p.encode_request(3, b"HEAD", b"/x", headers=fields)))
        self.assertEqual((first.headers, again.headers), (fields, fields))
        self.assertIsNot(first.headers, again.headers)
        again.headers.append((b"x", b"y"))
        self.assertEqual(p.decode_request(one(p.encode_request(
            5, b"GET", b"/", headers=fields))).headers, fields)
        # The same fields with an inline body: the body stays the body.
        with_body = p.decode_request(one(p.encode_request(
            7, b"POST", b"/", headers=fields, body=b"abc")))
        self.assertEqual((with_body.headers, with_body.body), (fields, b"abc"))
        # A body that looks like a remembered block is still a body.
        encoded = p.encode_request(9, b"GET", b"/", headers=fields)
        block = encoded[encoded.index(b"\x00\x03\x00\x04host"):]
        tricky = p.decode_request(one(p.encode_request(
            11, b"POST", b"/", headers=[(b"a", b"b")], body=block)))
        self.assertEqual((tricky.headers, tricky.body), ([(b"a", b"b")], block))
        raw = bytearray(p.encode_request(13, b"GET", b"/", headers=[(b"a", b"bad")]))
        raw[raw.rindex(b"bad")] = 0x0A
        for _ in range(2):
            with self.assertRaisesRegex(ProtocolError, "CR, LF or NUL"):
                p.decode_request(one(bytes(raw)))

    def test_response_rules_for_the_worker(self) -> None:
        for status in (100, 199, 99, 1000):
            with self.assertRaises(ValueError):
                p.encode_response(1, status, [])
        p.encode_response(1, 101, [])
        with self.assertRaises(ValueError):
            p.encode_response(1, 200, [(b"x", b"a\r\nb")])
        with self.assertRaises(ValueError):
            p.encode_response(1, 200, [], cache=3)
        f = one(p.encode_response(9, 304, [], cache=1, ttl=60, end_stream=False))
        r = p.decode_response(f)
        self.assertEqual((r.status, r.cache, r.ttl, r.end_stream), (304, 1, 60, False))

    def test_invalidate(self) -> None:
        f = one(p.encode_invalidate(b"/news/", prefix=True))
        self.assertEqual(f.payload, b"\x01/news/")
        self.assertEqual(p.decode_invalidate(f.payload), p.Invalidate(True, b"/news/"))
        for bad in (b"news", b"/a b", b""):
            with self.assertRaises(ValueError):
                p.encode_invalidate(bad)


class Windows(unittest.TestCase):
    def test_request_window(self) -> None:
        st = p.StreamState(1, 1000, 1000)
        st.on_request_body(600, False)
        self.assertEqual(st.request_window, 400)
        with self.assertRaises(p.StreamError):
            st.on_request_body(401, False)
        self.assertEqual(st.consume(600), 600)     # grant what the app consumed
        self.assertEqual(st.request_window, 1000)
        st.on_request_body(1000, True)
        self.assertEqual(st.consume(1000), 0)      # direction ended: no WINDOW due
        with self.assertRaises(p.StreamError):
            st.on_request_body(0, True)            # DATA after END_STREAM

    def test_response_window(self) -> None:
        st = p.StreamState(1, 10, 10)
        st.on_sent(10)
        self.assertEqual(st.can_send(), 0)
        with self.assertRaises(ValueError):
            st.on_sent(1)
        st.on_window(5)
        self.assertEqual(st.can_send(), 5)
        with self.assertRaises(p.StreamError):
            st.on_window(p.MAX_WINDOW)             # would pass 2^31-1
        st.on_window(p.MAX_WINDOW - 5)
        self.assertEqual(st.can_send(), p.MAX_WINDOW)

    def test_closed(self) -> None:
        st = p.StreamState(1, 10, 10)
        st.request_ended = True
        self.assertFalse(st.closed)
        st.response_ended = True
        self.assertTrue(st.closed)


if __name__ == "__main__":
    unittest.main()
