//! The byte stream over an upgraded WebSocket connection: MQTT bytes in
//! binary messages both ways, with frame boundaries ignored on reading
//! [MQTT-6.0.0-2], so `connection::serve` sees what it sees on TCP.
//!
//! Two limits keep a client from growing the broker's memory: tungstenite's
//! frame and message size limits (set by the `Upgrader`), and [`Budgeted`],
//! which caps the raw bytes read until the broker first writes (the upgrade
//! request, then the CONNECT), as the TCP path caps a CONNECT before
//! authentication.

use super::WebSocketError;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest binary message sent. tungstenite's output buffer keeps the
/// capacity of the largest frame it ever wrote for the connection's life, so
/// this bounds what a subscriber of large messages leaves allocated; a larger
/// packet spans messages, which clients must accept [MQTT-6.0.0-2].
pub(crate) const MAX_SENT_MESSAGE: usize = 16 * 1024;

/// A socket that fails a read past `remaining` bytes, until lifted.
pub(crate) struct Budgeted<S> {
    inner: S,
    /// Bytes still allowed, and the budget they came from; `None` once lifted.
    remaining: Option<(usize, usize)>,
}

impl<S> Budgeted<S> {
    pub(crate) fn new(inner: S, budget: usize) -> Self {
        Self {
            inner,
            remaining: Some((budget, budget)),
        }
    }

    fn reset(&mut self, budget: usize) {
        self.remaining = Some((budget, budget));
    }

    fn lift(&mut self) {
        self.remaining = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some((remaining, budget)) = this.remaining else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if remaining == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                WebSocketError::OverBudget(budget),
            )));
        }
        // Read into at most `remaining` bytes of `buf`, initialised so that no
        // unsafe code is needed to account for them.
        let window = buf.initialize_unfilled_to(remaining.min(buf.remaining()));
        let mut limited = ReadBuf::new(window);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let read = limited.filled().len();
        buf.advance(read);
        this.remaining = Some((remaining - read, budget));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An upgraded WebSocket connection as an `AsyncRead + AsyncWrite` byte stream.
pub(crate) struct WsStream<S> {
    ws: WebSocketStream<Budgeted<S>>,
    /// The unread rest of the last binary message; empty (and unallocated)
    /// while the client is idle.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// `connect_budget`: raw bytes the client may send before the broker's
    /// first write.
    pub(super) fn new(mut ws: WebSocketStream<Budgeted<S>>, connect_budget: usize) -> Self {
        ws.get_mut().reset(connect_budget);
        Self {
            ws,
            pending: Bytes::new(),
        }
    }
}

/// The budget error inside a tungstenite I/O error, or the error as it is.
pub(super) fn unwrap_budget(error: tungstenite::Error) -> WebSocketError {
    match error {
        tungstenite::Error::Io(io_error) if is_over_budget(&io_error) => io_error
            .into_inner()
            .and_then(|inner| inner.downcast::<WebSocketError>().ok())
            .map_or(WebSocketError::OverBudget(0), |inner| *inner),
        other => WebSocketError::WebSocket(other),
    }
}

fn is_over_budget(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<WebSocketError>())
        .is_some_and(|inner| matches!(inner, WebSocketError::OverBudget(_)))
}

/// A tungstenite error as an I/O error for `connection::serve`.
fn to_io(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(error) => error,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::BrokenPipe.into()
        }
        other => io::Error::new(io::ErrorKind::InvalidData, WebSocketError::WebSocket(other)),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Drained, `pending` drops the reference that keeps the message's buffer alive.
            if crate::io::read_pending(&mut this.pending, buf) {
                return Poll::Ready(Ok(()));
            }
            // tungstenite answers pings and close frames itself while reading.
            match ready!(this.ws.poll_next_unpin(cx)) {
                // The close handshake is done or the socket ended: EOF.
                None => return Poll::Ready(Ok(())),
                // MQTT bytes regardless of how they were split into frames
                // or messages [MQTT-6.0.0-2].
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // [MQTT-6.0.0-1]: a non-binary data frame closes the connection.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        WebSocketError::TextFrame,
                    )))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(error)) => return Poll::Ready(Err(to_io(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    /// Sends `buf`, up to [`MAX_SENT_MESSAGE`] of it, as one binary message
    /// [MQTT-6.0.0-1].
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.ws.poll_ready_unpin(cx)).map_err(to_io)?;
        // The broker answers: the CONNECT is read, so lift its budget.
        this.ws.get_mut().lift();
        let sent = &buf[..buf.len().min(MAX_SENT_MESSAGE)];
        this.ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(sent)))
            .map_err(to_io)?;
        Poll::Ready(Ok(sent.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws.poll_flush_unpin(cx).map_err(to_io)
    }

    /// Sends a close frame if the socket takes it now, then shuts the socket
    /// down: never waits for a client that stopped reading.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let _ = this.ws.poll_close_unpin(cx);
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_past_the_budget_fail_until_it_is_lifted() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut budgeted = Budgeted::new(server, 10);
        client.write_all(&[7u8; 30]).await.unwrap();
        let mut buf = [0u8; 64];
        let mut read = 0;
        let error = loop {
            match budgeted.read(&mut buf).await {
                Ok(n) => read += n,
                Err(error) => break error,
            }
        };
        assert_eq!(read, 10, "exactly the budget is read");
        assert!(is_over_budget(&error), "{error}");
        budgeted.lift();
        assert_eq!(budgeted.read(&mut buf).await.unwrap(), 20);
    }

    #[test]
    fn the_budget_error_comes_out_of_tungstenite_typed() {
        let io_error = io::Error::new(io::ErrorKind::InvalidData, WebSocketError::OverBudget(5));
        let error = unwrap_budget(tungstenite::Error::Io(io_error));
        assert!(matches!(error, WebSocketError::OverBudget(5)), "{error}");
    }
}
