//! The broker side of unit tests: one accepted TCP connection that reads
//! and writes MQTT 3.1.1 packets, and a run pointed at it (or at several).

use crate::cli::{Clients, Target};
use crate::engine::Run;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, Publish};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A run of `count` clients named by `client_id` against 127.0.0.1:`port`.
pub async fn run_against(port: u16, count: u32, client_id: &str) -> Arc<Run> {
    run_against_nodes(&format!("127.0.0.1:{port}"), count, client_id).await
}

/// A run against the broker addresses of a `-h` list.
pub async fn run_against_nodes(hosts: &str, count: u32, client_id: &str) -> Arc<Run> {
    let target = Target {
        host: hosts.into(),
        port: 1883,
        ifaddr: vec![],
        username: None,
        password: None,
        fleet_key: None,
        keepalive: 60,
        report: None,
        json: false,
    };
    let clients = Clients {
        count,
        interval_ms: 10,
        connrate: None,
        client_id: client_id.into(),
        start_number: 0,
    };
    Run::new(&target, &clients).await.unwrap()
}

/// One accepted connection.
pub struct Peer {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    pub async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = listener.accept().await.unwrap();
        Peer {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn read(&mut self) -> Packet {
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(packet) => return packet,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("{e}"),
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn write(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// Reads CONNECT, answers CONNACK; returns the CONNECT's clean session flag.
    pub async fn handshake(&mut self) -> bool {
        let Packet::Connect(connect) = self.read().await else {
            panic!("expected CONNECT")
        };
        self.write(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
        .await;
        connect.clean_session
    }

    /// The next PUBLISH, answering PINGREQs on the way.
    pub async fn publish(&mut self) -> Publish {
        loop {
            match self.read().await {
                Packet::Publish(publish) => return publish,
                Packet::PingReq => self.write(Packet::PingResp).await,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
