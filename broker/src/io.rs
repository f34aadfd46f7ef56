//! Socket I/O for one connection, holding no buffer while the client is idle.
//!
//! A million idle sessions must cost little, so reads land in a stack buffer
//! and are copied into the connection's read buffer only when bytes arrive,
//! and both buffers are released as soon as they are empty again.

use bytes::{Buf, BytesMut};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const READ_CHUNK: usize = 4096;
/// Past this many unsent bytes the connection stops taking more messages
/// from its session queue, so a slow reader builds a queue, not a buffer.
pub(crate) const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Copies what fits of `pending` (bytes a stream adapter decoded and its
/// reader has not taken yet) into `buf`, and releases `pending`'s memory once
/// it is drained. False if `pending` was empty.
pub(crate) fn read_pending<B: Buf + Default>(pending: &mut B, buf: &mut ReadBuf<'_>) -> bool {
    if !pending.has_remaining() {
        return false;
    }
    let n = pending.chunk().len().min(buf.remaining());
    buf.put_slice(&pending.chunk()[..n]);
    pending.advance(n);
    if !pending.has_remaining() {
        *pending = B::default();
    }
    true
}

pub(crate) enum IoEvent {
    /// New bytes are in the read buffer.
    Read,
    /// The peer closed its side.
    Eof,
    /// The write buffer was fully written.
    Flushed,
}

pub(crate) struct Io<S> {
    stream: S,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    unflushed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            unflushed: false,
        }
    }

    /// Writes what it can, then reads if `can_read`. Ready on read data, EOF,
    /// a drained write buffer, or an error.
    pub fn poll_io(&mut self, cx: &mut Context<'_>, can_read: bool) -> Poll<io::Result<IoEvent>> {
        if let Poll::Ready(result) = self.poll_write_out(cx) {
            return Poll::Ready(result.map(|()| IoEvent::Flushed));
        }
        if !can_read {
            return Poll::Pending;
        }
        self.poll_read_in(cx)
    }

    /// Ready(Ok) once a non-empty write buffer has been written and flushed.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.unflushed {
            return Poll::Pending;
        }
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                self.wbuf = BytesMut::new();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<IoEvent>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(IoEvent::Eof)),
            Poll::Ready(Ok(())) => {
                self.rbuf.extend_from_slice(buf.filled());
                Poll::Ready(Ok(IoEvent::Read))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for more bytes; `Ok(false)` on EOF. Also keeps writing.
    pub async fn read_more(&mut self) -> io::Result<bool> {
        loop {
            match poll_fn(|cx| self.poll_io(cx, true)).await? {
                IoEvent::Read => return Ok(true),
                IoEvent::Eof => return Ok(false),
                IoEvent::Flushed => {}
            }
        }
    }

    /// Writes out everything buffered.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() && !self.unflushed {
            return Ok(());
        }
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Releases the read buffer once every byte in it was consumed.
    pub fn release_read_buffer(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
    }
}
