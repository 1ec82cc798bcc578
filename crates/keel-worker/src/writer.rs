//! The one task per connection that writes to the socket. Request tasks and the reading loop
//! append encoded frames to the shared buffer; this task takes everything pending and writes
//! it with one `write_all`, so frames produced together leave in one syscall.

use crate::conn::Conn;
use crate::connection::WriteHalf;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub(crate) async fn run(conn: Arc<Conn>, mut socket: WriteHalf) -> std::io::Result<()> {
    // Two buffers swapped back and forth: appenders fill one while this task writes the other,
    // and neither is reallocated in the steady state.
    let mut batch = BytesMut::with_capacity(64 * 1024);
    loop {
        let number = match conn.take_pending(&mut batch) {
            Err(()) => return Ok(()),
            Ok(None) => {
                conn.writer_idle().await;
                continue;
            }
            Ok(Some(number)) => number,
        };
        let written = socket.write_all(&batch).await;
        batch.clear();
        conn.written(number);
        if let Err(e) = written {
            conn.writer_failed();
            return Err(e);
        }
    }
}
