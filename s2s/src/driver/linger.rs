//! The one way fedgate closes a stream's transport: write the last bytes, shut down the write
//! side, then keep reading and discarding what the peer still sends, for a bounded time and
//! number of bytes, before the socket is dropped.
//!
//! Why: a TCP socket closed while unread input sits in its receive buffer answers with a RST,
//! and a RST may destroy what we wrote last (the stream error and `</stream:stream>`) before
//! the peer's application has read it (RFC 6120 §4.9.1: the peer must be able to read the
//! error). Closing our write side first (TLS `close_notify`, then TCP FIN) tells the peer we
//! are done; reading until it closes too (or the bounds are reached) keeps the receive buffer
//! empty so that the close stays a FIN. The bounds keep a peer that never stops writing from
//! holding the connection.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

/// The bounds of one close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// How long writing the last bytes may take (a peer that does not read cannot hold us).
    pub write_time: Duration,
    /// How long to keep reading after our write side is shut down.
    pub read_time: Duration,
    /// How many bytes to read and discard after our write side is shut down.
    pub read_bytes: usize,
}

impl Linger {
    /// What every stream close uses: 5 s to write, then up to 2 s or 64 KiB of discarded input.
    pub const STREAM: Self = Self {
        write_time: Duration::from_secs(5),
        read_time: Duration::from_secs(2),
        read_bytes: 64 * 1024,
    };
}

/// How a close ended (for logs and tests; the transport is done with in every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed its side as well (EOF, or TLS `close_notify`): a clean close.
    PeerClosed,
    /// The peer was still sending when `read_bytes` had been discarded.
    ByteLimit,
    /// The peer neither closed nor went quiet within `read_time`.
    TimeLimit,
    /// Our last bytes could not be written in `write_time`.
    WriteTimeout,
    /// Our last bytes could not be written: the peer is gone.
    WriteFailed(io::ErrorKind),
    /// Reading after our close failed (a reset from the peer, a TLS error).
    ReadFailed(io::ErrorKind),
}

/// Write `last`, flush, shut down the write side and linger (see the module docs).
pub async fn close<S>(io: &mut S, last: &[u8], linger: Linger) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write = async {
        io.write_all(last).await?;
        io.flush().await?;
        io.shutdown().await
    };
    match timeout_at(Instant::now() + linger.write_time, write).await {
        Err(_) => return Closed::WriteTimeout,
        Ok(Err(e)) => return Closed::WriteFailed(e.kind()),
        Ok(Ok(())) => {}
    }
    let deadline = Instant::now() + linger.read_time;
    let mut buf = [0u8; 4096];
    let mut discarded = 0usize;
    loop {
        match timeout_at(deadline, io.read(&mut buf)).await {
            Err(_) => return Closed::TimeLimit,
            Ok(Ok(0)) => return Closed::PeerClosed,
            Ok(Ok(n)) => {
                discarded += n;
                if discarded >= linger.read_bytes {
                    return Closed::ByteLimit;
                }
            }
            // A TLS peer that closes TCP without `close_notify`: it closed all the same.
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Closed::PeerClosed,
            Ok(Err(e)) => return Closed::ReadFailed(e.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const SMALL: Linger = Linger {
        write_time: Duration::from_millis(300),
        read_time: Duration::from_millis(300),
        read_bytes: 1000,
    };

    /// The peer reads our last bytes and then EOF, and closes in turn: a clean close.
    #[tokio::test]
    async fn the_peer_reads_everything_then_eof() {
        let (mut ours, mut theirs) = duplex(64 * 1024);
        let peer = tokio::spawn(async move {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            theirs.shutdown().await.unwrap();
            got
        });
        let how = close(&mut ours, b"</stream:stream>", SMALL).await;
        assert_eq!(how, Closed::PeerClosed);
        assert_eq!(peer.await.unwrap(), b"</stream:stream>");
    }

    /// A peer that keeps writing: its input is read and discarded up to the byte bound (so
    /// the transport is not closed under unread input while it is within the bound), and it
    /// still reads our last bytes and EOF.
    #[tokio::test]
    async fn a_peer_that_keeps_writing_is_drained_up_to_the_byte_bound() {
        let (mut ours, theirs) = duplex(256);
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let writer = tokio::spawn(async move {
            let chunk = [b'x'; 100];
            let mut sent = 0usize;
            while wr.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
                if sent > 100_000 {
                    break;
                }
            }
            sent
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.map(|_| got)
        });
        let how = close(&mut ours, b"<stream:error/></stream:stream>", SMALL).await;
        assert_eq!(how, Closed::ByteLimit);
        assert_eq!(
            reader.await.unwrap().unwrap(),
            b"<stream:error/></stream:stream>"
        );
        drop(ours);
        assert!(writer.await.unwrap() >= SMALL.read_bytes);
    }

    /// A peer that neither writes nor closes holds the close only for `read_time`.
    #[tokio::test]
    async fn a_silent_peer_is_given_up_after_the_time_bound() {
        let (mut ours, _theirs) = duplex(1024);
        let t0 = Instant::now();
        let how = close(&mut ours, b"</stream:stream>", SMALL).await;
        assert_eq!(how, Closed::TimeLimit);
        assert!(Instant::now() - t0 >= SMALL.read_time);
    }

    /// A peer that does not read cannot hold the close either.
    #[tokio::test]
    async fn a_peer_that_does_not_read_is_given_up_after_the_write_bound() {
        let (mut ours, _theirs) = duplex(4);
        let how = close(&mut ours, b"</stream:stream>", SMALL).await;
        assert_eq!(how, Closed::WriteTimeout);
    }

    /// The transport is gone: nothing to linger on.
    #[tokio::test]
    async fn a_gone_peer_ends_the_close_at_once() {
        let (mut ours, theirs) = duplex(1024);
        drop(theirs);
        let how = close(&mut ours, b"</stream:stream>", SMALL).await;
        assert!(matches!(how, Closed::WriteFailed(_)), "{how:?}");
    }
}
