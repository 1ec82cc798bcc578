//! A response written by keel itself on a connection the HTTP/1.1 front serves
//! (`h1_front.rs`), its head framed as hyper's server frames one (`http1_head.rs`): a
//! `Content-Length` from the worker is kept and the body is sent as it comes; otherwise a
//! body of known size gets one, and any other body is sent chunked; HEAD gets the head
//! only, with the length its body declares (none for a body that has ended, as hyper).
//!
//! Frames that are ready together leave in one write; the body is not read ahead of the
//! socket (a slow client holds the worker's stream back through its window, as under hyper).

use crate::http1_head::{self, Framing};
use crate::request_path::LoggedBody;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::Response;
use http::header;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use std::io;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes `resp` to `io` (`head_only` for HEAD). `out` is a scratch buffer. Returns whether
/// the connection may carry another request: not when `close` was asked, when the response
/// says `Connection: close`, or when its body broke off (the connection is then unusable).
pub async fn write_response<S>(
    io: &mut S,
    resp: Response<LoggedBody>,
    head_only: bool,
    close: bool,
    out: &mut BytesMut,
) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let mut headers = parts.headers;
    let close = close || crate::header_list::lists(&headers, header::CONNECTION, "close");
    headers.remove(header::TRANSFER_ENCODING);
    out.clear();
    http1_head::put_start(status, &headers, out);
    // As hyper: a HEAD's body that has ended says nothing of the length a GET would be
    // sent (a compressed answer's is not known without compressing), so no length is
    // declared from it; a GET's ended body is 0 bytes long.
    let size = if head_only && body.is_end_stream() {
        None
    } else {
        body.size_hint().exact()
    };
    let framing = http1_head::put_end(status, &headers, size, head_only, close, out);

    if head_only || matches!(framing, Framing::None) {
        // The body's access-log line is written as it is dropped: before the client has
        // the whole answer, so a client that reads its answer finds its line in the log.
        drop(body);
        io.write_all(out).await?;
        return Ok(!close);
    }
    let chunked = matches!(framing, Framing::Chunked);
    let mut sent = 0u64;
    loop {
        // A frame that is ready now joins what is waiting in `out`; otherwise `out` goes out
        // first, so the client is never kept waiting for a frame that is not there yet.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let data: Bytes = match frame {
            None => break,
            // The body broke off (the worker failed mid-answer): the client sees the
            // connection end without a complete answer, as under hyper.
            Some(Err(_)) => {
                io.write_all(out).await?;
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Trailers and empty frames: nothing to send.
                _ => continue,
            },
        };
        let mut data = data;
        if let Framing::Length(n) = framing
            && sent + data.len() as u64 > n
        {
            // More than the declared length: never sent (it would read as another
            // response); the connection ends after the declared bytes.
            data.truncate((n - sent) as usize);
            out.put_slice(&data);
            io.write_all(out).await?;
            tracing::debug!("response body longer than its Content-Length: cut");
            return Ok(false);
        }
        sent += data.len() as u64;
        if chunked {
            out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.put_slice(&data);
            out.put_slice(b"\r\n");
        } else if out.len() + data.len() <= 64 * 1024 {
            out.put_slice(&data);
        } else {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        }
    }
    if chunked {
        out.put_slice(b"0\r\n\r\n");
    }
    drop(body);
    io.write_all(out).await?;
    out.clear();
    if let Framing::Length(n) = framing
        && n != sent
    {
        // A body shorter or longer than its Content-Length: the connection cannot carry
        // another request.
        tracing::debug!("response body of {sent} bytes, {n} declared: connection closed");
        return Ok(false);
    }
    Ok(!close)
}
