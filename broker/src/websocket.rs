//! MQTT over WebSocket (RFC 6455; MQTT 5.0 chapter 6) for the WebSocket
//! listeners: the HTTP upgrade of an accepted connection (path, `mqtt`
//! subprotocol, size and frame limits), after which the connection is a byte
//! stream ([`stream::WsStream`]) that `connection::serve` reads and writes
//! like a TCP socket.

mod stream;

pub(crate) use stream::WsStream;

use crate::config::BrokerConfig;
use stream::Budgeted;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{
    self,
    handshake::server::{ErrorResponse, Request, Response},
    http::{header::SEC_WEBSOCKET_PROTOCOL, HeaderValue, StatusCode},
    protocol::WebSocketConfig as FrameLimits,
};
use tracing::debug;

/// Largest HTTP upgrade request read, in bytes. Browsers send 1–2 KiB
/// (cookies included); no legitimate request comes near it.
pub(crate) const MAX_UPGRADE_REQUEST: usize = 16 * 1024;
/// Room above `max_packet_size` in one WebSocket message or frame, for the
/// small packets a client may put in the same message as a large one.
pub(crate) const MESSAGE_HEADROOM: usize = 16 * 1024;
/// What the WebSocket layer reads from the socket at a time: small, because
/// tungstenite keeps this buffer for the life of the connection.
const READ_CHUNK: usize = 4096;

/// Subprotocols the listener accepts, in order of preference: `mqtt`
/// [MQTT-6.0.0-4], and `mqttv3.1`, which older 3.1.1 clients (Paho JavaScript)
/// still offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why a WebSocket connection ended before or outside MQTT.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebSocketError {
    /// The upgrade request named another path; it was answered 404.
    #[error("upgrade request for {0:?}, not the MQTT path (answered 404)")]
    WrongPath(String),
    /// The client sent more than its budget before the broker answered.
    #[error("more than {0} bytes before the broker answered")]
    OverBudget(usize),
    /// A text frame [MQTT-6.0.0-1].
    #[error("a text frame; MQTT travels in binary frames")]
    TextFrame,
    /// A bad upgrade request or a WebSocket protocol violation.
    #[error(transparent)]
    WebSocket(#[from] tungstenite::Error),
}

/// How one WebSocket listener upgrades its connections.
pub(crate) struct Upgrader {
    path: Box<str>,
    limits: FrameLimits,
    /// Bytes a client may send after the upgrade until the broker first
    /// answers (its CONNACK): the CONNECT and some headroom.
    connect_budget: usize,
}

impl Upgrader {
    pub(crate) fn new(path: &str, config: &BrokerConfig) -> Self {
        let max_message = config.max_packet_size as usize + MESSAGE_HEADROOM;
        let limits = FrameLimits::default()
            .read_buffer_size(READ_CHUNK)
            // Io batches packets and flushes; a frame goes out at once.
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        Self {
            path: path.into(),
            limits,
            connect_budget: config.max_connect_packet() + MESSAGE_HEADROOM,
        }
    }

    /// Reads the upgrade request (at most [`MAX_UPGRADE_REQUEST`] bytes) and
    /// answers it: 101 with `Sec-WebSocket-Protocol: mqtt` when the client
    /// offers it, 404 for another path, nothing for a request that is not a
    /// WebSocket upgrade. The caller bounds the time.
    pub(crate) async fn accept<S>(&self, stream: S) -> Result<WsStream<S>, WebSocketError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut wrong_path = None;
        // The error type is tungstenite's: an HTTP response.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| {
            let path = request.uri().path();
            if path != &*self.path {
                wrong_path = Some(path.chars().take(64).collect::<String>());
                let mut refusal = ErrorResponse::new(Some("no MQTT endpoint here\n".into()));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                return Err(refusal);
            }
            if let Some(chosen) = pick_subprotocol(request) {
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
            }
            Ok(response)
        };
        let budgeted = Budgeted::new(stream, MAX_UPGRADE_REQUEST);
        let upgraded =
            tokio_tungstenite::accept_hdr_async_with_config(budgeted, callback, Some(self.limits))
                .await;
        match upgraded {
            Ok(ws) => Ok(WsStream::new(ws, self.connect_budget)),
            Err(error) => match wrong_path {
                Some(path) => Err(WebSocketError::WrongPath(path)),
                None => {
                    debug!(%error, "WebSocket upgrade failed");
                    Err(stream::unwrap_budget(error))
                }
            },
        }
    }
}

/// The subprotocol to answer with, if the client offered one Herald speaks.
/// A client that offers none is still served: some omit the header.
fn pick_subprotocol(request: &Request) -> Option<&'static str> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    SUBPROTOCOLS
        .into_iter()
        .find(|protocol| offered.contains(protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: &[&str]) -> Request {
        let mut builder = Request::builder().uri("/mqtt");
        for value in protocols {
            builder = builder.header(SEC_WEBSOCKET_PROTOCOL, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn mqtt_is_chosen_from_what_the_client_offers() {
        assert_eq!(pick_subprotocol(&request(&["mqtt"])), Some("mqtt"));
        assert_eq!(pick_subprotocol(&request(&["wamp, mqtt"])), Some("mqtt"));
        assert_eq!(
            pick_subprotocol(&request(&["mqttv3.1", "mqtt"])),
            Some("mqtt")
        );
        assert_eq!(pick_subprotocol(&request(&["mqttv3.1"])), Some("mqttv3.1"));
        assert_eq!(pick_subprotocol(&request(&["wamp"])), None);
        assert_eq!(pick_subprotocol(&request(&[])), None);
    }
}
