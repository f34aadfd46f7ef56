//! PROXY protocol v2 on the MQTT listener, over real TCP: behind a load
//! balancer that sends the header, a terminal connects as usual; a
//! connection without the header is closed and counted, never parsed as MQTT.

mod common;

use common::*;
use herald_broker::codec::*;
use ppp::v2::{Addresses, Builder, Command, Protocol, Version};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

fn proxy_header(command: Command, addresses: impl Into<Addresses>) -> Vec<u8> {
    Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
        .build()
        .expect("a valid PROXY header")
}

async fn behind_load_balancer() -> TestBroker {
    start(|config| config.proxy_protocol = true).await
}

#[tokio::test]
async fn a_terminal_behind_the_load_balancer_connects() {
    let broker = behind_load_balancer().await;
    let terminal: SocketAddr = (Ipv4Addr::new(203, 0, 113, 7), 51234).into();
    let listener: SocketAddr = (Ipv4Addr::new(10, 0, 0, 1), 1883).into();
    let mut raw = Raw::open(broker.addr).await;
    raw.send_raw(&proxy_header(Command::Proxy, (terminal, listener)))
        .await;
    let (mut raw, ack) = raw.handshake("speaker-1", true, None, None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(raw.is_alive().await);
    assert_eq!(
        broker.counter("herald_protocol_errors_total", "kind", "proxy_header"),
        0
    );
}

#[tokio::test]
async fn a_health_check_with_a_local_header_connects() {
    let broker = behind_load_balancer().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send_raw(&proxy_header(Command::Local, Addresses::Unspecified))
        .await;
    let (_raw, ack) = raw.handshake("health-check", true, None, None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
}

#[tokio::test]
async fn a_connection_without_the_header_is_closed_and_counted() {
    let broker = behind_load_balancer().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: "direct".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    ))
    .await;
    assert!(
        raw.recv_within(Duration::from_secs(5)).await.is_none(),
        "closed without an answer"
    );
    assert_eq!(
        broker.counter("herald_protocol_errors_total", "kind", "proxy_header"),
        1
    );
}
