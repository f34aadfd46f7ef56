//! A server TLS stream that holds no buffer while its client is idle.
//!
//! rustls's buffered connection (and tokio-rustls over it) keeps a 4 KiB
//! record buffer for the whole life of every connection; on a node of idle
//! terminals that was the largest part of a TLS session. This stream drives
//! rustls's unbuffered API instead: the encrypted bytes received, the
//! decrypted bytes not yet read and the encrypted bytes not yet sent live in
//! buffers it owns, and each is released as soon as it is empty, as the plain
//! listener's are (`io.rs`). What rustls needs to send on its own (handshake
//! flights, session tickets, a key update's answer, close_notify) is queued
//! with the rest and goes out before the stream waits for the peer.

use bytes::BytesMut;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at a time; records are reassembled across reads.
const READ_CHUNK: usize = 4096;
/// The most encrypted bytes held waiting for the rest of a message: the largest
/// handshake message rustls accepts (64 KiB) plus a record's worth.
const MAX_INCOMING: usize = 0xffff + 16 * 1024 + 1024;
/// Past this many encrypted bytes not yet sent, a write waits for the socket.
const OUTGOING_HIGH_WATER: usize = 64 * 1024;

pub(crate) struct TlsStream<S> {
    io: S,
    conn: UnbufferedServerConnection,
    /// Encrypted bytes received and not yet processed.
    incoming: Vec<u8>,
    /// Decrypted application data not yet read.
    plaintext: BytesMut,
    /// Encrypted bytes to send, sent up to `outgoing_sent`.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The socket's read side reached its end.
    eof: bool,
    /// The peer sent close_notify: no application data follows.
    peer_closed: bool,
    close_notify_sent: bool,
}

/// What a pass over the received bytes asks rustls to send.
enum Emit<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Where a pass over the received bytes ended.
enum Step {
    /// rustls needs more bytes from the peer to go on.
    NeedInput,
    /// Application data may be sent; this many bytes of it were encrypted.
    Writable(usize),
    /// Both sides sent close_notify.
    Closed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Runs the server handshake over `io` to its end.
    pub(crate) async fn accept(io: S, conn: UnbufferedServerConnection) -> io::Result<Self> {
        let mut stream = Self {
            io,
            conn,
            incoming: Vec::new(),
            plaintext: BytesMut::new(),
            outgoing: Vec::new(),
            outgoing_sent: 0,
            eof: false,
            peer_closed: false,
            close_notify_sent: false,
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = self.process(Emit::Nothing)?;
            ready!(self.poll_send(cx))?;
            match step {
                Step::Writable(_) if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Step::Closed => return Poll::Ready(Err(eof("TLS handshake"))),
                _ if self.eof || self.peer_closed => return Poll::Ready(Err(eof("TLS handshake"))),
                _ => ready!(self.poll_receive(cx))?,
            }
        }
    }

    /// Processes every complete record received: handshake messages and
    /// alerts, whose answers are queued to send, and application data, which is
    /// decrypted into `plaintext`. Then encrypts what `send` asks for, if
    /// application data may be sent.
    fn process(&mut self, send: Emit<'_>) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let step = match state.map_err(invalid_data)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        self.plaintext
                            .extend_from_slice(record.map_err(invalid_data)?.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.outgoing, 0, |out| encode.encode(out))?;
                    None
                }
                // The encoded bytes are queued in `outgoing`, in order.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Step::NeedInput),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Step::Closed),
                ConnectionState::WriteTraffic(mut traffic) => Some(Step::Writable(match send {
                    Emit::Nothing => 0,
                    Emit::Data(data) => {
                        append(&mut self.outgoing, data.len(), |out| {
                            traffic.encrypt(data, out)
                        })?;
                        data.len()
                    }
                    Emit::CloseNotify => {
                        if !self.close_notify_sent {
                            append(&mut self.outgoing, 0, |out| traffic.queue_close_notify(out))?;
                            self.close_notify_sent = true;
                        }
                        0
                    }
                })),
                // Early data is not enabled in the server's configuration.
                _ => return Err(invalid_data("unexpected TLS connection state")),
            };
            self.incoming.drain(..discard);
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// Reads once from the socket into `incoming`, or notes its end.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(invalid_data("TLS message too large")));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            self.eof = true;
        } else {
            self.incoming.extend_from_slice(buf.filled());
        }
        Poll::Ready(Ok(()))
    }

    /// Ready once everything queued in `outgoing` is written; then frees it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_sent < self.outgoing.len() {
            let unsent = &self.outgoing[self.outgoing_sent..];
            match ready!(Pin::new(&mut self.io).poll_write(cx, unsent))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.outgoing_sent += n,
            }
        }
        if !self.outgoing.is_empty() {
            self.outgoing = Vec::new();
            self.outgoing_sent = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if crate::io::read_pending(&mut this.plaintext, buf) {
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let step = this.process(Emit::Nothing)?;
            if !this.plaintext.is_empty() || this.peer_closed || matches!(step, Step::Closed) {
                continue;
            }
            // Answers rustls queued (a session ticket, a key update) go out
            // now; a full socket leaves them for the next write or read.
            if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                return Poll::Ready(Err(error));
            }
            if this.eof {
                // The peer left without close_notify (as rustls reports it).
                return Poll::Ready(Err(eof("TLS connection")));
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outgoing.len() - this.outgoing_sent >= OUTGOING_HIGH_WATER {
            ready!(this.poll_send(cx))?;
        }
        match this.process(Emit::Data(data))? {
            Step::Writable(n) => {
                if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(n))
            }
            Step::NeedInput => Poll::Ready(Err(io::Error::other(
                "TLS connection cannot send application data yet",
            ))),
            Step::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            // Best effort: a connection rustls already considers failed or
            // closed sends no close_notify.
            let _ = this.process(Emit::CloseNotify);
            this.close_notify_sent = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// An encode or encrypt error that may ask for a larger buffer.
trait NeedsRoom: std::fmt::Display {
    fn required_size(&self) -> Option<usize>;
}

impl NeedsRoom for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

impl NeedsRoom for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

/// Appends to `out` what `write` puts into the buffer it is given, growing the
/// buffer to the size `write` asks for. `payload` bytes plus a record's
/// overhead usually fit at the first try.
fn append<E: NeedsRoom>(
    out: &mut Vec<u8>,
    payload: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = payload + 64;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(error) => match error.required_size() {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(io::Error::other(error.to_string()));
                }
            },
        }
    }
}

fn invalid_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{what}: peer closed the connection without close_notify"),
    )
}
