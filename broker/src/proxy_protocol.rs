//! PROXY protocol v2: the header a load balancer (AWS NLB, HAProxy, Azure
//! Private Link, ...) writes before the terminal's first byte, carrying the
//! terminal's own address. Read only where `broker.proxy_protocol` is on;
//! then every connection on the MQTT listeners must start with one, and the
//! address it names is the peer Herald logs.
//!
//! The header is read byte-exactly (16 fixed bytes, then the length they
//! announce), so nothing of the MQTT or TLS stream behind it is consumed.
//! Parsing is the `ppp` crate's.

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Fixed part: 12-byte signature, version/command, family/protocol, length.
const FIXED_LEN: usize = 16;

/// Largest address block accepted. Addresses take at most 216 bytes (Unix
/// sockets); the rest is TLVs, which load balancers keep small (AWS's VPC
/// endpoint id, Azure's link id). A bigger header is refused, not buffered.
pub const MAX_ADDRESS_BLOCK: usize = 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection does not start with a PROXY protocol v2 signature")]
    MissingSignature,
    #[error("PROXY header announces {0} bytes, more than {MAX_ADDRESS_BLOCK}")]
    TooLong(usize),
    #[error("invalid PROXY v2 header: {0}")]
    Invalid(String),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one PROXY v2 header from the start of `stream`. Returns the
/// terminal's address, or `None` for a header that carries none (a `LOCAL`
/// command, such as a load balancer's health check, or an unspecified or Unix
/// family): the socket's own peer then stands.
pub async fn read_header<S>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyHeaderError>
where
    S: AsyncRead + Unpin,
{
    let mut header = vec![0u8; FIXED_LEN];
    stream.read_exact(&mut header).await?;
    if !header.starts_with(ppp::v2::PROTOCOL_PREFIX) {
        return Err(ProxyHeaderError::MissingSignature);
    }
    let announced = u16::from_be_bytes([header[14], header[15]]) as usize;
    if announced > MAX_ADDRESS_BLOCK {
        return Err(ProxyHeaderError::TooLong(announced));
    }
    header.resize(FIXED_LEN + announced, 0);
    stream.read_exact(&mut header[FIXED_LEN..]).await?;
    source_address(&header)
}

/// The source address of a complete v2 header.
fn source_address(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let parsed = ppp::v2::Header::try_from(header)
        .map_err(|error| ProxyHeaderError::Invalid(error.to_string()))?;
    if parsed.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Version};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn header(command: Command, addresses: impl Into<ppp::v2::Addresses>) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
            .build()
            .expect("a valid header")
    }

    #[tokio::test]
    async fn reads_the_terminal_address_and_nothing_behind_it() {
        let source: SocketAddr = (Ipv4Addr::new(203, 0, 113, 7), 51234).into();
        let target: SocketAddr = (Ipv4Addr::new(10, 0, 0, 1), 1883).into();
        let mut bytes = header(Command::Proxy, (source, target));
        bytes.extend_from_slice(b"\x10MQTT");
        let mut stream = &bytes[..];
        assert_eq!(read_header(&mut stream).await.unwrap(), Some(source));
        assert_eq!(stream, b"\x10MQTT", "the MQTT bytes stay unread");
    }

    #[tokio::test]
    async fn ipv6_and_local_headers() {
        let source: SocketAddr = (Ipv6Addr::LOCALHOST, 40000).into();
        let target: SocketAddr = (Ipv6Addr::LOCALHOST, 1883).into();
        let bytes = header(Command::Proxy, (source, target));
        assert_eq!(read_header(&mut &bytes[..]).await.unwrap(), Some(source));
        let local = header(Command::Local, ppp::v2::Addresses::Unspecified);
        assert_eq!(read_header(&mut &local[..]).await.unwrap(), None);
    }

    #[tokio::test]
    async fn refuses_missing_oversized_and_truncated_headers() {
        let mqtt_connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd";
        assert!(matches!(
            read_header(&mut &mqtt_connect[..]).await,
            Err(ProxyHeaderError::MissingSignature)
        ));
        let mut oversized = ppp::v2::PROTOCOL_PREFIX.to_vec();
        oversized.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read_header(&mut &oversized[..]).await,
            Err(ProxyHeaderError::TooLong(65535))
        ));
        let source: SocketAddr = (Ipv4Addr::LOCALHOST, 1).into();
        let whole = header(Command::Proxy, (source, source));
        assert!(matches!(
            read_header(&mut &whole[..whole.len() - 1]).await,
            Err(ProxyHeaderError::Io(_))
        ));
    }
}
