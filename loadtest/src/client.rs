//! A lean MQTT 3.1.1 client for load tests: a socket, a read buffer only
//! while bytes are pending, and the codec from rumqttc's `mqttbytes`. No
//! client-library object per terminal, so a hundred thousand idle terminals
//! fit in a few hundred MB.

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{self, Packet};
use rumqttc::mqttbytes::QoS;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Spreads connections over several local source addresses, so that more
/// than ~28k connections fit towards one broker address and port.
pub struct SourceAddresses {
    addresses: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourceAddresses {
    pub fn new(addresses: Vec<IpAddr>) -> Self {
        Self {
            addresses,
            next: AtomicUsize::new(0),
        }
    }

    /// Opens a TCP connection to `broker`, from the next source address.
    pub async fn connect(&self, broker: SocketAddr) -> anyhow::Result<TcpStream> {
        let socket = if broker.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let socket = socket.map_err(explain_socket_error)?;
        if !self.addresses.is_empty() {
            let source =
                self.addresses[self.next.fetch_add(1, Ordering::Relaxed) % self.addresses.len()];
            bind_address_no_port(&socket);
            socket
                .bind(SocketAddr::new(source, 0))
                .with_context(|| format!("binding source address {source}"))?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(broker))
            .await
            .context("TCP connect timed out")?
            .map_err(explain_socket_error)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// IP_BIND_ADDRESS_NO_PORT: the kernel picks the port at connect time, per
/// (source, destination) pair, instead of reserving one per bound socket.
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a valid socket fd with a c_int option value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Turns the errors a load test runs into into advice.
fn explain_socket_error(error: std::io::Error) -> anyhow::Error {
    match error.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => anyhow::anyhow!(
            "out of file descriptors ({error}): raise the open-file limit (ulimit -n) or use fewer clients"
        ),
        Some(libc::EADDRNOTAVAIL) => anyhow::anyhow!(
            "out of local ports ({error}): add source addresses with --ifaddr 127.0.0.2,127.0.0.3,..."
        ),
        _ => anyhow::Error::new(error),
    }
}

/// Raises the open-file limit to fit `clients` sockets, or says why it cannot.
pub fn ensure_fd_limit(clients: u64) -> anyhow::Result<()> {
    let wanted = clients + 128;
    let raised = rlimit::increase_nofile_limit(wanted).context("raising the open-file limit")?;
    if raised < wanted {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
        bail!(
            "{clients} clients need about {wanted} open files but this process may open {raised} (hard limit {hard}); lower -c, or raise the hard limit"
        );
    }
    Ok(())
}

/// Appends `packet`'s bytes to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) -> anyhow::Result<()> {
    packet.write(out, usize::MAX)?;
    Ok(())
}

/// One MQTT connection.
pub struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    /// CONNACK's session present flag: the broker resumed a persistent session.
    pub session_present: bool,
}

/// CONNECT settings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: u16,
    pub clean_session: bool,
}

impl Connection {
    /// Sends CONNECT and waits for a successful CONNACK.
    pub async fn open(
        stream: TcpStream,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> anyhow::Result<Connection> {
        let mut connection = Connection {
            stream,
            buf: BytesMut::new(),
            session_present: false,
        };
        let mut connect = v4::Connect::new(options.client_id.as_str());
        connect.keep_alive = options.keepalive;
        connect.clean_session = options.clean_session;
        if let Some(password) = &options.password {
            connect.set_login(
                options
                    .username
                    .clone()
                    .unwrap_or_else(|| options.client_id.clone()),
                password.clone(),
            );
        }
        connection.send(&Packet::Connect(connect)).await?;
        match tokio::time::timeout(timeout, connection.recv())
            .await
            .context("CONNACK timed out")??
        {
            Packet::ConnAck(ack) if ack.code == v4::ConnectReturnCode::Success => {
                connection.session_present = ack.session_present;
                Ok(connection)
            }
            Packet::ConnAck(ack) => bail!("refused: {:?}", ack.code),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::with_capacity(packet.size());
        encode(packet, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Writes packets encoded with [`encode`] in one go.
    pub async fn send_encoded(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        let mut publish = v4::Publish::from_bytes(topic, qos, payload);
        publish.pkid = pkid;
        self.send(&Packet::Publish(publish)).await
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let mut subscribe = v4::Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        self.send(&Packet::Subscribe(subscribe)).await
    }

    /// The next packet already read from the socket, if a whole one is
    /// buffered; never waits.
    pub fn next_buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        match Packet::read(&mut self.buf, 16 << 20) {
            Ok(packet) => {
                if self.buf.is_empty() {
                    self.buf = BytesMut::new(); // idle terminals hold no buffer
                }
                Ok(Some(packet))
            }
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => bail!("bad packet from the broker: {e}"),
        }
    }

    /// Reads the next packet (cancel-safe: bytes stay buffered).
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = self.next_buffered()? {
                return Ok(packet);
            }
            // Wait without a buffer, then read into the stack: an idle
            // terminal holds no 4 KiB read buffer.
            self.stream.readable().await?;
            let mut chunk = [0u8; 4096];
            match self.stream.try_read(&mut chunk) {
                Ok(0) => bail!("connection closed by the broker"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the broker closed the connection (FIN or reset), seen without
    /// reading from the socket: the kernel reports it even while unread
    /// bytes come before it. Never waits.
    pub async fn peer_closed(&self) -> bool {
        tokio::select! {
            biased;
            ready = self.stream.ready(tokio::io::Interest::READABLE) => {
                ready.map_or(true, |ready| ready.is_read_closed())
            }
            () = std::future::ready(()) => false,
        }
    }

    /// Closes without DISCONNECT (as a device losing its network would).
    pub fn drop_connection(self) {}

    pub async fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect).await;
    }
}
