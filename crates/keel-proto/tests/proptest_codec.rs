//! Property and rule tests of the frame codec (`keel_proto::codec`), from the outside.
//!
//! (a) every valid frame round-trips, alone and as a stream cut anywhere;
//! (b) arbitrary bytes never panic the decoder and never make it buffer more than one frame;
//! (c) an oversized declared length is refused from the header alone;
//! plus one test per validation rule of `docs/worker-protocol.md` §"Validation".

use bytes::{BufMut, Bytes, BytesMut};
use keel_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------------------------------------
// Strategies: valid field values only.

const TCHAR_EXTRA: &[u8] = b"!#$%&'*+-.^_`|~";

fn tchar() -> impl Strategy<Value = u8> {
    prop_oneof![
        b'a'..=b'z',
        b'A'..=b'Z',
        b'0'..=b'9',
        proptest::sample::select(TCHAR_EXTRA),
    ]
}

fn token(max: usize) -> impl Strategy<Value = Bytes> {
    vec(tchar(), 1..=max).prop_map(Bytes::from)
}

fn method() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        proptest::sample::select(&["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"][..])
            .prop_map(|m| Bytes::from_static(m.as_bytes())),
        token(12),
    ]
}

fn header_name() -> impl Strategy<Value = Bytes> {
    // The protocol sends lower-case names; the decoder accepts any token.
    vec(tchar(), 1..=24).prop_map(|v| Bytes::from(v.to_ascii_lowercase()))
}

fn header_value() -> impl Strategy<Value = Bytes> {
    vec(
        any::<u8>().prop_filter("no CR, LF, NUL", |b| !matches!(b, b'\r' | b'\n' | 0)),
        0..48,
    )
    .prop_map(Bytes::from)
}

fn headers() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
    vec((header_name(), header_value()), 0..8)
}

/// Bytes a target or invalidation URL may hold: anything above 0x20 but DEL.
fn url_byte() -> impl Strategy<Value = u8> {
    prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff]
}

fn target() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        vec(url_byte(), 0..64).prop_map(|mut v| {
            v.insert(0, b'/');
            Bytes::from(v)
        }),
        Just(Bytes::from_static(b"*")),
        vec(url_byte(), 1..64).prop_map(Bytes::from),
    ]
}

fn small_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn body() -> impl Strategy<Value = Bytes> {
    prop_oneof![Just(Bytes::new()), small_bytes(16), small_bytes(4096)]
}

fn addr() -> impl Strategy<Value = Option<SocketAddr>> {
    prop_oneof![
        Just(None),
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))),
    ]
}

fn stream_id() -> impl Strategy<Value = StreamId> {
    prop_oneof![1u32..=16, 1u32..=u32::MAX]
}

fn http_version() -> impl Strategy<Value = HttpVersion> {
    prop_oneof![
        Just(HttpVersion::Http10),
        Just(HttpVersion::Http11),
        Just(HttpVersion::Http2),
        Just(HttpVersion::Http3),
    ]
}

fn cache_policy() -> impl Strategy<Value = CachePolicy> {
    prop_oneof![
        Just(CachePolicy::None),
        any::<u32>().prop_map(CachePolicy::Ttl),
        Just(CachePolicy::UntilInvalidated),
    ]
}

fn request() -> impl Strategy<Value = Frame> {
    (
        (
            stream_id(),
            method(),
            target(),
            http_version(),
            any::<bool>(),
        ),
        (small_bytes(32), addr(), addr(), any::<u32>()),
        (headers(), body(), any::<bool>()),
    )
        .prop_map(
            |(
                (id, method, target, version, tls),
                (server_name, client, local, deadline_ms),
                (headers, body, end),
            )| {
                Frame::Request(RequestHead {
                    id,
                    method,
                    target,
                    version,
                    tls,
                    server_name,
                    client,
                    local,
                    deadline_ms,
                    headers,
                    body,
                    end,
                })
            },
        )
}

fn response() -> impl Strategy<Value = Frame> {
    (
        stream_id(),
        100u16..=999,
        cache_policy(),
        headers(),
        body(),
        any::<bool>(),
    )
        .prop_map(|(id, status, cache, headers, body, end)| {
            Frame::Response(ResponseHead {
                id,
                status,
                cache,
                headers,
                body,
                end,
            })
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            small_bytes(40)
        )
            .prop_map(
                |(version, pid, capacity, max_payload, software)| Frame::Hello(Hello {
                    version,
                    pid,
                    capacity,
                    max_payload,
                    software,
                })
            ),
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            small_bytes(40)
        )
            .prop_map(|(version, max_payload, initial_window, capacity, pool)| {
                Frame::Welcome(Welcome {
                    version,
                    max_payload,
                    initial_window,
                    capacity,
                    pool,
                })
            }),
        request(),
        (stream_id(), body(), any::<bool>()).prop_map(|(id, data, end)| Frame::Data {
            id,
            data,
            end
        }),
        stream_id().prop_map(|id| Frame::Started { id }),
        response(),
        (stream_id(), 1u32..=u32::MAX).prop_map(|(id, increment)| Frame::Window { id, increment }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        any::<u32>().prop_map(|timeout_ms| Frame::Drain { timeout_ms }),
        // from_code: AbortCode::Other(1..=5) is not a canonical value (it decodes as the named code).
        (stream_id(), any::<u32>()).prop_map(|(id, c)| Frame::Abort {
            id,
            code: AbortCode::from_code(c)
        }),
        (any::<bool>(), vec(url_byte(), 0..64)).prop_map(|(prefix, mut url)| {
            url.insert(0, b'/');
            Frame::Invalidate {
                scope: if prefix {
                    InvalidateScope::Prefix
                } else {
                    InvalidateScope::Exact
                },
                url: Bytes::from(url),
            }
        }),
    ]
}

fn encoded(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode(frame, &mut out).expect("valid frame encodes");
    out
}

/// Feeds `bytes` to a decoder in chunks of the given sizes (cycled; 0 is read as 1) and
/// returns the frames and the bytes left over.
fn decode_in_chunks(
    decoder: &Decoder,
    bytes: &[u8],
    sizes: &[usize],
) -> (Result<Vec<Frame>, DecodeError>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].max(1).min(rest.len());
        i += 1;
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (Err(e), buf),
            }
        }
    }
    (Ok(frames), buf)
}

// ---------------------------------------------------------------------------------------------
// (a) round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let mut buf = encoded(&frame);
        let len = buf.len();
        prop_assert_eq!(u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize, len - HEADER_LEN);
        prop_assert_eq!(frame.stream_id(), u32::from_be_bytes(buf[8..12].try_into().unwrap()));
        let decoded = Decoder::default().decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Some(frame));
        prop_assert!(buf.is_empty(), "decode consumed {} of {} bytes", len - buf.len(), len);
    }

    #[test]
    fn a_frame_needs_all_its_bytes(frame in frame()) {
        let bytes = encoded(&frame);
        // Every cut through the head, then a stride through the body.
        for cut in (0..bytes.len()).filter(|&c| c < 200 || c % 97 == 0 || c + 1 == bytes.len()) {
            let mut buf = BytesMut::from(&bytes[..cut]);
            prop_assert_eq!(Decoder::default().decode(&mut buf).unwrap(), None);
            prop_assert_eq!(buf.len(), cut, "nothing consumed from a partial frame");
        }
    }

    #[test]
    fn a_stream_of_frames_survives_any_split(
        frames in vec(frame(), 1..6),
        sizes in vec(0usize..300, 1..16),
    ) {
        let mut bytes = BytesMut::new();
        for f in &frames {
            encode(f, &mut bytes).unwrap();
        }
        let decoder = Decoder::default();
        let (got, rest) = decode_in_chunks(&decoder, &bytes, &sizes);
        prop_assert_eq!(got.unwrap(), frames.clone());
        prop_assert!(rest.is_empty());

        let (got, rest) = decode_in_chunks(&decoder, &bytes, &[1]);
        prop_assert_eq!(got.unwrap(), frames);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn encode_data_matches_encode(id in stream_id(), data in body(), end in any::<bool>()) {
        let mut fast = BytesMut::new();
        encode_data(id, &data, end, &mut fast);
        prop_assert_eq!(fast, encoded(&Frame::Data { id, data, end }));
    }

    #[test]
    fn reserved_bits_are_ignored(frame in frame(), flags in any::<u8>(), reserved in any::<u16>()) {
        let mut bytes = encoded(&frame);
        // Only END_STREAM means something, and only on REQUEST, DATA and RESPONSE.
        let carries_end = matches!(frame, Frame::Request(_) | Frame::Data { .. } | Frame::Response(_));
        let end_bit = if carries_end { bytes[5] & FLAG_END_STREAM } else { flags & FLAG_END_STREAM };
        bytes[5] = (flags & !FLAG_END_STREAM) | end_bit;
        bytes[6..8].copy_from_slice(&reserved.to_be_bytes());
        prop_assert_eq!(Decoder::default().decode(&mut bytes).unwrap(), Some(frame));
    }
}

// ---------------------------------------------------------------------------------------------
// (b) arbitrary input

const SMALL_LIMIT: u32 = 4096;

/// Bytes that often look like frame headers, so the decoder gets past the length check.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        0u32..=SMALL_LIMIT + 16,
        0u8..=0x0e,
        any::<u8>(),
        any::<u16>(),
        0u32..4,
    )
        .prop_map(|(len, kind, flags, res, id)| {
            let mut h = Vec::with_capacity(HEADER_LEN);
            h.put_u32(len);
            h.put_u8(kind);
            h.put_u8(flags);
            h.put_u16(res);
            h.put_u32(id);
            h
        });
    vec(
        prop_oneof![header, vec(any::<u8>(), 0..64), vec(any::<u8>(), 0..3000)],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_or_overbuffer(
        bytes in prop_oneof![vec(any::<u8>(), 0..12_000), hostile_bytes()],
        sizes in vec(1usize..2048, 1..16),
    ) {
        let decoder = Decoder::new(SMALL_LIMIT);
        let max_frame = HEADER_LEN + SMALL_LIMIT as usize;
        let max_chunk = *sizes.iter().max().unwrap();
        let mut buf = BytesMut::new();
        let mut rest = &bytes[..];
        let mut i = 0;
        'feed: while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            i += 1;
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                let len_before = buf.len();
                match decoder.decode(&mut buf) {
                    Ok(Some(_)) => prop_assert!(buf.len() < len_before),
                    Ok(None) => {
                        // Nothing consumed, and what waits is less than one frame.
                        prop_assert_eq!(buf.len(), len_before);
                        prop_assert!(buf.len() < max_frame);
                        if buf.len() >= HEADER_LEN {
                            // Room was reserved for exactly the rest of the declared frame.
                            let declared = u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize;
                            prop_assert!(buf.capacity() >= HEADER_LEN + declared);
                        }
                        break;
                    }
                    Err(_) => break 'feed,
                }
            }
            // Buffered bytes: at most one partial frame plus the chunk just read. Capacity:
            // BytesMut::reserve may double an allocation (amortised growth), so the bound on
            // the allocation is twice that, whatever the peer sends.
            prop_assert!(buf.len() < max_frame + n);
            prop_assert!(
                buf.capacity() <= 2 * (max_frame + max_chunk),
                "capacity {} for limit {} and chunks of at most {}",
                buf.capacity(), SMALL_LIMIT, max_chunk
            );
        }
    }

    /// The decoder's own reservation: for a partial frame in an exactly-sized buffer, it
    /// reserves room for that frame and never more than an amortised doubling of it.
    #[test]
    fn decoder_reserves_only_the_declared_frame(declared in 0u32..=SMALL_LIMIT, have in 12usize..64) {
        let decoder = Decoder::new(SMALL_LIMIT);
        let total = HEADER_LEN + declared as usize;
        prop_assume!(have < total);
        let mut buf = BytesMut::with_capacity(have);
        buf.put_u32(declared);
        buf.put_u8(kind::DATA);
        buf.put_u8(0);
        buf.put_u16(0);
        buf.put_u32(1);
        buf.put_bytes(0, have - HEADER_LEN);
        let cap_before = buf.capacity();
        prop_assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        prop_assert!(buf.capacity() >= total);
        prop_assert!(buf.capacity() <= total.max(2 * cap_before), "capacity {} for a frame of {}", buf.capacity(), total);
    }

    // -----------------------------------------------------------------------------------------
    // (c) oversized declared lengths

    #[test]
    fn oversized_length_is_refused_from_the_header_alone(
        len in (SMALL_LIMIT + 1)..=u32::MAX,
        kind_byte in any::<u8>(),
        flags in any::<u8>(),
        id in any::<u32>(),
    ) {
        let decoder = Decoder::new(SMALL_LIMIT);
        let mut header = BytesMut::with_capacity(HEADER_LEN);
        header.put_u32(len);
        header.put_u8(kind_byte);
        header.put_u8(flags);
        header.put_u16(0);
        header.put_u32(id);
        for cut in 0..HEADER_LEN {
            let mut partial = BytesMut::from(&header[..cut]);
            prop_assert_eq!(decoder.decode(&mut partial).unwrap(), None);
        }
        let cap_before = header.capacity();
        prop_assert_eq!(
            decoder.decode(&mut header),
            Err(DecodeError::Oversized { len, max: SMALL_LIMIT })
        );
        // Refused before any reservation for the payload.
        prop_assert_eq!(header.capacity(), cap_before);
        prop_assert_eq!(header.len(), HEADER_LEN);
    }
}

#[test]
fn the_limit_itself_is_accepted_and_clamped() {
    let decoder = Decoder::new(SMALL_LIMIT);
    let mut buf = BytesMut::new();
    encode_data(1, &vec![7u8; SMALL_LIMIT as usize], false, &mut buf);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Frame::Data { .. }))
    ));
    assert_eq!(Decoder::new(u32::MAX).max_payload(), MAX_PAYLOAD_LIMIT);
    assert_eq!(Decoder::default().max_payload(), DEFAULT_MAX_PAYLOAD);
}

#[test]
fn encode_refuses_fields_too_long_for_their_prefix() {
    let mut out = BytesMut::new();
    let long = Bytes::from(vec![b'a'; 70_000]);
    let f = Frame::Hello(Hello {
        version: 1,
        pid: 1,
        capacity: 1,
        max_payload: DEFAULT_MAX_PAYLOAD,
        software: long.clone(),
    });
    assert_eq!(encode(&f, &mut out), Err(EncodeError::TooLong("software")));
    let f = Frame::Data {
        id: 1,
        data: Bytes::from(vec![0u8; MAX_PAYLOAD_LIMIT as usize + 1]),
        end: false,
    };
    out.clear();
    assert!(matches!(
        encode(&f, &mut out),
        Err(EncodeError::Oversized(_))
    ));
    assert!(out.is_empty(), "a refused frame leaves nothing behind");
}

// ---------------------------------------------------------------------------------------------
// Validation rules, one by one.

fn raw(kind_byte: u8, flags: u8, id: u32, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(payload.len() as u32);
    b.put_u8(kind_byte);
    b.put_u8(flags);
    b.put_u16(0);
    b.put_u32(id);
    b.extend_from_slice(payload);
    b
}

fn decode_one(mut bytes: BytesMut) -> Result<Option<Frame>, DecodeError> {
    Decoder::default().decode(&mut bytes)
}

fn malformed(what: &'static str) -> impl Fn(Result<Option<Frame>, DecodeError>) {
    move |r| match r {
        Err(DecodeError::Malformed { what: w, .. }) => assert_eq!(w, what),
        other => panic!("expected Malformed({what}), got {other:?}"),
    }
}

fn base_request() -> RequestHead {
    RequestHead {
        id: 1,
        method: Bytes::from_static(b"GET"),
        target: Bytes::from_static(b"/"),
        version: HttpVersion::Http11,
        tls: false,
        server_name: Bytes::new(),
        client: None,
        local: None,
        deadline_ms: 0,
        headers: vec![],
        body: Bytes::new(),
        end: true,
    }
}

fn base_response() -> ResponseHead {
    ResponseHead {
        id: 1,
        status: 200,
        cache: CachePolicy::None,
        headers: vec![],
        body: Bytes::new(),
        end: true,
    }
}

/// The encoder does not validate: it writes whatever it is given, so it builds bad frames too.
fn request_with(f: impl FnOnce(&mut RequestHead)) -> BytesMut {
    let mut h = base_request();
    f(&mut h);
    encoded(&Frame::Request(h))
}

fn response_with(f: impl FnOnce(&mut ResponseHead)) -> BytesMut {
    let mut h = base_response();
    f(&mut h);
    encoded(&Frame::Response(h))
}

#[test]
fn method_must_be_a_token() {
    for m in [&b""[..], b"GE T", b"GET\0", b"G:T", b"G\xc3\xa9T", b"(GET)"] {
        let r = decode_one(request_with(|h| h.method = Bytes::copy_from_slice(m)));
        malformed("method is not a token")(r);
    }
    assert!(decode_one(request_with(|h| h.method = Bytes::from_static(b"M-SEARCH"))).is_ok());
}

#[test]
fn target_must_be_non_empty_without_space_or_control() {
    for t in [&b""[..], b"/a b", b"/a\tb", b"/\0", b"/\x7f", b"/\r\n"] {
        let r = decode_one(request_with(|h| h.target = Bytes::copy_from_slice(t)));
        malformed("target is empty or holds a space or control byte")(r);
    }
    assert!(
        decode_one(request_with(
            |h| h.target = Bytes::from_static(b"/caf\xc3\xa9?q")
        ))
        .is_ok()
    );
}

#[test]
fn header_names_must_be_tokens() {
    for n in [&b""[..], b"host:", b"ho st", b"x\r", b"\0"] {
        let hdr = (Bytes::copy_from_slice(n), Bytes::from_static(b"v"));
        malformed("header name is not a token")(decode_one(request_with(|h| {
            h.headers = vec![hdr.clone()]
        })));
        malformed("header name is not a token")(decode_one(response_with(|h| {
            h.headers = vec![hdr]
        })));
    }
}

#[test]
fn header_values_hold_no_cr_lf_nul() {
    for v in [&b"a\rb"[..], b"a\nb", b"\0", b"ok\r\nx-injected: 1"] {
        let hdr = (Bytes::from_static(b"x"), Bytes::copy_from_slice(v));
        let what = "header value holds CR, LF or NUL";
        malformed(what)(decode_one(request_with(|h| h.headers = vec![hdr.clone()])));
        malformed(what)(decode_one(response_with(|h| h.headers = vec![hdr])));
    }
    // Empty values, tabs and obs-text are allowed.
    let ok = (Bytes::from_static(b"x"), Bytes::from_static(b"\t\xff "));
    let empty = (Bytes::from_static(b"y"), Bytes::new());
    assert!(decode_one(response_with(|h| h.headers = vec![ok, empty])).is_ok());
}

#[test]
fn status_is_100_to_999() {
    for s in [0u16, 99, 1000, u16::MAX] {
        malformed("status outside 100..=999")(decode_one(response_with(|h| h.status = s)));
    }
    for s in [100u16, 999] {
        assert!(decode_one(response_with(|h| h.status = s)).is_ok());
    }
}

#[test]
fn stream_frames_need_a_stream_id() {
    let what = "stream frame with stream id 0";
    malformed(what)(decode_one(request_with(|h| h.id = 0)));
    malformed(what)(decode_one(response_with(|h| h.id = 0)));
    for f in [
        Frame::Data {
            id: 0,
            data: Bytes::new(),
            end: true,
        },
        Frame::Started { id: 0 },
        Frame::Window {
            id: 0,
            increment: 1,
        },
        Frame::Abort {
            id: 0,
            code: AbortCode::ClientGone,
        },
    ] {
        malformed(what)(decode_one(encoded(&f)));
    }
}

#[test]
fn connection_frames_have_stream_id_0() {
    let frames = [
        Frame::Hello(Hello {
            version: 1,
            pid: 1,
            capacity: 1,
            max_payload: DEFAULT_MAX_PAYLOAD,
            software: Bytes::new(),
        }),
        Frame::Welcome(Welcome {
            version: 1,
            max_payload: DEFAULT_MAX_PAYLOAD,
            initial_window: DEFAULT_INITIAL_WINDOW,
            capacity: 1,
            pool: Bytes::new(),
        }),
        Frame::Ping { nonce: 1 },
        Frame::Pong { nonce: 1 },
        Frame::Drain { timeout_ms: 1 },
        Frame::Invalidate {
            scope: InvalidateScope::Exact,
            url: Bytes::from_static(b"/"),
        },
    ];
    for f in frames {
        let mut b = encoded(&f);
        b[8..12].copy_from_slice(&7u32.to_be_bytes());
        malformed("connection frame with a stream id")(decode_one(b));
    }
}

#[test]
fn unknown_kind_is_a_connection_error() {
    for k in [0x00u8, 0x0d, 0x42, 0xff] {
        assert_eq!(
            decode_one(raw(k, 0, 0, b"")),
            Err(DecodeError::UnknownKind(k))
        );
        assert_eq!(
            decode_one(raw(k, 0, 1, b"abc")),
            Err(DecodeError::UnknownKind(k))
        );
    }
}

#[test]
fn fixed_size_frames_refuse_trailing_bytes() {
    let cases: [(u8, u32, &[u8]); 6] = [
        (kind::STARTED, 1, b"x"),
        (kind::WINDOW, 1, b"\0\0\0\x01x"),
        (kind::PING, 0, b"12345678x"),
        (kind::PONG, 0, b"12345678x"),
        (kind::DRAIN, 0, b"\0\0\0\x01x"),
        (kind::ABORT, 1, b"\0\0\0\x01x"),
    ];
    for (k, id, payload) in cases {
        malformed("trailing bytes")(decode_one(raw(k, 0, id, payload)));
        // ... and short ones.
        if payload.len() >= 2 {
            malformed("payload too short")(decode_one(raw(
                k,
                0,
                id,
                &payload[..payload.len() - 2],
            )));
        }
    }
}

#[test]
fn zero_window_increment_is_refused() {
    malformed("zero window increment")(decode_one(raw(kind::WINDOW, 0, 1, &[0, 0, 0, 0])));
}

#[test]
fn enumerated_fields_refuse_unknown_values() {
    // HTTP version code, first byte of the REQUEST payload.
    let mut b = encoded(&Frame::Request(base_request()));
    b[HEADER_LEN] = 12;
    malformed("unknown HTTP version")(decode_one(b));
    // Address family, after version(1) flags(1) deadline(4) method(2+3) target(2+1) sni(2).
    let mut b = encoded(&Frame::Request(base_request()));
    b[HEADER_LEN + 16] = 5;
    malformed("unknown address family")(decode_one(b));
    // Cache policy byte, after the status.
    let mut b = encoded(&Frame::Response(base_response()));
    b[HEADER_LEN + 2] = 3;
    malformed("unknown cache policy")(decode_one(b));
    // Invalidate scope.
    malformed("unknown invalidate scope")(decode_one(raw(kind::INVALIDATE, 0, 0, b"\x02/")));
    // Unknown abort codes are kept, not refused.
    assert_eq!(
        decode_one(raw(kind::ABORT, 0, 9, &[0, 0, 0, 99])).unwrap(),
        Some(Frame::Abort {
            id: 9,
            code: AbortCode::Other(99)
        })
    );
}

#[test]
fn invalidate_url_starts_with_slash_without_space_or_control() {
    let what = "url must start with / and hold no space or control";
    for url in [&b""[..], b"news", b"/a b", b"/\x7f", b"/\n"] {
        let mut p = vec![1u8];
        p.extend_from_slice(url);
        malformed(what)(decode_one(raw(kind::INVALIDATE, 0, 0, &p)));
    }
}

#[test]
fn truncated_variable_frames_are_malformed() {
    for f in [
        Frame::Request(RequestHead {
            headers: vec![(Bytes::from_static(b"host"), Bytes::from_static(b"example"))],
            client: Some("[::1]:1".parse().unwrap()),
            ..base_request()
        }),
        Frame::Response(ResponseHead {
            headers: vec![(Bytes::from_static(b"a"), Bytes::from_static(b"b"))],
            ..base_response()
        }),
        Frame::Hello(Hello {
            version: 1,
            pid: 1,
            capacity: 1,
            max_payload: 1,
            software: Bytes::from_static(b"sw"),
        }),
    ] {
        let full = encoded(&f);
        // Cut the payload short but keep the header's length consistent with it.
        for keep in 0..full.len() - HEADER_LEN {
            let b = raw(
                full[4],
                full[5],
                u32::from_be_bytes(full[8..12].try_into().unwrap()),
                &full[HEADER_LEN..HEADER_LEN + keep],
            );
            let r = decode_one(b);
            assert!(
                matches!(r, Err(DecodeError::Malformed { .. })),
                "{f:?} cut to {keep} bytes: {r:?}"
            );
        }
    }
}

#[test]
fn a_huge_header_count_does_not_allocate_for_it() {
    // count 65535 but no header bytes: refused as too short, without reserving 65535 slots.
    let mut b = encoded(&Frame::Response(base_response()));
    let n = b.len();
    b[n - 2..].copy_from_slice(&[0xff, 0xff]);
    malformed("payload too short")(decode_one(b));
}
