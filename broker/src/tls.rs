//! TLS for the MQTT listeners (mqtts and wss): the server configuration from
//! `[broker.tls]`, and the handshake that yields a [`TlsStream`].

mod stream;

pub(crate) use stream::TlsStream;

use crate::config::TlsConfig;
use crate::server::BrokerError;
use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Accepts TLS connections with one server configuration.
#[derive(Clone)]
pub(crate) struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl TlsAcceptor {
    /// Loads the certificate chain and private key `config` names.
    pub(crate) fn new(config: &TlsConfig) -> Result<Self, BrokerError> {
        use rustls_pemfile::{certs, private_key};
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| BrokerError::Tls(format!("cannot read {}: {e}", path.display())))
        };
        let cert_pem = read(&config.cert_path)?;
        let key_pem = read(&config.key_path)?;
        let chain = certs(&mut &cert_pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BrokerError::Tls(format!("{}: {e}", config.cert_path.display())))?;
        if chain.is_empty() {
            return Err(BrokerError::Tls(format!(
                "{}: no certificate found",
                config.cert_path.display()
            )));
        }
        let key = private_key(&mut &key_pem[..])
            .map_err(|e| BrokerError::Tls(format!("{}: {e}", config.key_path.display())))?
            .ok_or_else(|| {
                BrokerError::Tls(format!(
                    "{}: no private key found",
                    config.key_path.display()
                ))
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BrokerError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| BrokerError::Tls(e.to_string()))?;
        Ok(Self {
            config: Arc::new(server),
        })
    }

    /// Runs the server handshake over `io`.
    pub(crate) async fn accept<S>(&self, io: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let conn = UnbufferedServerConnection::new(self.config.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        TlsStream::accept(io, conn).await
    }
}
