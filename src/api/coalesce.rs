//! Writes that wait one turn of the scheduler before they reach the socket.
//!
//! An HTTP/2 connection writes whatever frames its streams have queued each time it is polled.
//! A unary gRPC answer is three frames — headers, the message, the trailers — queued by the
//! request's task while the connection's task may already be running on the other worker, and a
//! request from tonic's client is two (headers, then the body from a task of its own). Strace of
//! the ingest bench showed every unary call take four `writev`s, two each way: each is a trip
//! through the kernel's loopback path and a wake-up of the peer.
//!
//! [`Coalesce`] keeps what is written until the connection flushes, and the first time it
//! flushes a fresh batch it yields once (wakes itself and returns `Pending`), so frames queued
//! meanwhile go out in the same write. A connection with nothing else to send loses one
//! turn of the scheduler — microseconds — not a timer's worth of latency.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held; a write that would hold more goes through at once.
const HOLD_MAX: usize = 64 << 10;

/// An I/O stream whose writes are held until a flush, which yields once before writing.
pub struct Coalesce<T> {
    io: T,
    out: Vec<u8>,
    /// How much of `out` is written.
    at: usize,
    /// The flush of what `out` holds was put off once already.
    yielded: bool,
}

impl<T> Coalesce<T> {
    pub fn new(io: T) -> Coalesce<T> {
        Coalesce {
            io,
            out: Vec::new(),
            at: 0,
            yielded: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes everything held.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.at < self.out.len() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.at += n;
        }
        self.out.clear();
        self.at = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    fn hold(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.len() - self.at + n > HOLD_MAX {
            // A large write (an export, a big answer) goes straight through, after what is held:
            // nothing is gained by copying it.
            std::task::ready!(self.drain(cx))?;
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        if self.at > 0 {
            // Part of what is held went out before the socket filled up: drop that part, so
            // the buffer stays as small as what is left to write.
            self.out.drain(..self.at);
            self.at = 0;
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.hold(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.hold(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.at < self.out.len() && !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A channel to the gRPC service at `url` whose connection coalesces its writes (a request's
/// headers and message go out in one write). An `https://` URL is reached over TLS, trusting
/// the PEM certificate `ca_pem` (a CA or the server's own self-signed certificate).
pub async fn channel(
    url: impl Into<String>,
    ca_pem: Option<&[u8]>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut ep = tonic::transport::Endpoint::from_shared(url.into())?;
    if let Some(ca) = ca_pem {
        ep = ep.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )?;
    }
    connect_endpoint(&ep).await
}

/// As [`channel`], for an endpoint configured by the caller (timeouts, windows, TLS).
pub async fn connect_endpoint(
    ep: &tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    ep.connect_with_connector(tower::service_fn(connect)).await
}

/// Connects a TCP stream to `uri`'s host and port (80 or 443 when it names none), without
/// Nagle's delay, its writes coalesced.
async fn connect(
    uri: tonic::transport::Uri,
) -> io::Result<hyper_util::rt::TokioIo<Coalesce<tokio::net::TcpStream>>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?;
    // An IPv6 literal comes bracketed.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(hyper_util::rt::TokioIo::new(Coalesce::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// Records each write it is given; accepts at most `limit` bytes per write.
    #[derive(Default)]
    struct Sink {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        limit: Option<usize>,
        /// Bytes it takes before it is full (`Pending`); unlimited when `None`.
        room: Option<usize>,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut n = self.limit.map_or(buf.len(), |l| l.min(buf.len()));
            if let Some(room) = self.room {
                if room == 0 {
                    return Poll::Pending;
                }
                n = n.min(room);
                self.room = Some(room - n);
            }
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Wakes(AtomicUsize);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(c: &mut Coalesce<Sink>, cx: &mut Context<'_>, bytes: &[u8]) -> usize {
        match Pin::new(c).poll_write_vectored(cx, &[IoSlice::new(bytes)]) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_written_before_the_second_flush_leave_in_one_write() {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Sink::default());
        assert_eq!(write(&mut c, &mut cx, b"headers+message"), 15);
        // The first flush yields: nothing written yet, and the task asked to run again.
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(c.get_ref().writes.is_empty());
        // Queued meanwhile: the trailers.
        assert_eq!(write(&mut c, &mut cx, b"+trailers"), 9);
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            c.get_ref().writes,
            vec![b"headers+message+trailers".to_vec()]
        );
        assert_eq!(c.get_ref().flushes, 1);
        // Nothing held: a flush goes straight down, without yielding.
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            (wakes.0.load(Ordering::SeqCst), c.get_ref().flushes),
            (1, 2)
        );
        // The next batch yields once again.
        write(&mut c, &mut cx, b"next");
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(c.get_ref().writes.len(), 2);
    }

    #[test]
    fn large_writes_go_through_after_what_is_held_and_short_writes_lose_nothing() {
        let waker = Waker::from(Arc::new(Wakes(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Sink {
            limit: Some(1000),
            ..Sink::default()
        });
        write(&mut c, &mut cx, b"small");
        let big = vec![7u8; HOLD_MAX];
        // The held bytes first, then as much of the large write as the socket takes.
        assert_eq!(write(&mut c, &mut cx, &big), 1000);
        assert_eq!(c.get_ref().writes[0], b"small");
        assert_eq!(c.get_ref().writes[1], vec![7u8; 1000]);
        // Held bytes that the socket takes a little at a time all arrive, in order.
        let msg: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        write(&mut c, &mut cx, &msg);
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert!(matches!(
            Pin::new(&mut c).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        let after: Vec<u8> = c.get_ref().writes[2..].concat();
        assert_eq!(after, msg);
        assert_eq!(c.get_ref().writes.len(), 2 + 5);
    }

    #[test]
    fn a_full_socket_keeps_only_what_is_left_to_write_and_loses_nothing() {
        let waker = Waker::from(Arc::new(Wakes(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Sink {
            room: Some(1000),
            ..Sink::default()
        });
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        write(&mut c, &mut cx, &first);
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending()); // the yield
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending()); // the socket is full
                                                                    // More frames while the socket is full: held after what is left, the sent part dropped.
        for round in 0..50u8 {
            write(&mut c, &mut cx, &[round; 100]);
            assert!(c.out.len() - c.at <= 4000 + 100 * (round as usize + 1));
            assert!(c.out.len() <= 4000 + 100 * (round as usize + 1));
        }
        c.io.room = None;
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        let mut expected = first.clone();
        for round in 0..50u8 {
            expected.extend_from_slice(&[round; 100]);
        }
        assert_eq!(c.get_ref().writes.concat(), expected);
        assert!(c.out.is_empty());
    }
}
