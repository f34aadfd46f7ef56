//! MQTT wire codec.
//!
//! Decoding and encoding are done by rumqttc's `mqttbytes` (v4 and v5). This
//! module adds what a server needs on top: it tells the protocol version from
//! the CONNECT packet, and it translates MQTT 3.1.1 packets to and from the 5.0
//! types, so the rest of the broker is written once against MQTT 5 packets.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
pub use rumqttc::v5::mqttbytes::v5::*;
use rumqttc::v5::mqttbytes::Error as V5Error;
pub use rumqttc::v5::mqttbytes::QoS;

/// The MQTT protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    V311,
    V5,
}

/// Why bytes from a client could not be turned into a packet.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocol(u8),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// Reads the protocol level out of a buffered CONNECT packet.
///
/// Returns `Ok(None)` until the whole fixed header and protocol name are in.
pub fn sniff_protocol(buf: &[u8]) -> Result<Option<ProtocolVersion>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(CodecError::NotConnect);
    }
    // Remaining length: 1 to 4 bytes of 7-bit groups.
    let mut pos = 1;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Ok(None);
        };
        pos += 1;
        if b & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return Err(CodecError::Malformed("malformed remaining length".into()));
        }
    }
    let Some(name_len) = buf.get(pos..pos + 2) else {
        return Ok(None);
    };
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    let level_at = pos + 2 + name_len;
    let Some(&level) = buf.get(level_at) else {
        return Ok(None);
    };
    match (&buf[pos + 2..level_at], level) {
        (b"MQTT", 4) => Ok(Some(ProtocolVersion::V311)),
        (b"MQTT", 5) => Ok(Some(ProtocolVersion::V5)),
        (b"MQTT" | b"MQIsdp", level) => Err(CodecError::UnsupportedProtocol(level)),
        _ => Err(CodecError::Malformed("unknown protocol name".into())),
    }
}

/// Decodes one packet from `buf`, or returns `Ok(None)` if it is not complete yet.
pub fn read(
    version: ProtocolVersion,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<Packet>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match version {
        ProtocolVersion::V5 => {
            // rumqttc refuses the short DISCONNECT forms MQTT 5 allows: no
            // body (reason 0x00) or a reason code without properties.
            if buf.first() == Some(&0xE0) && buf.len() >= 2 && buf[1] <= 1 {
                if buf[1] == 1 && buf.len() < 3 {
                    return Ok(None);
                }
                let code = if buf[1] == 0 { 0 } else { buf[2] };
                let _ = buf.split_to(2 + usize::from(buf[1]));
                let code = DisconnectReasonCode::try_from(code).map_err(|_| {
                    CodecError::Malformed(format!("unknown DISCONNECT reason code {code:#x}"))
                })?;
                return Ok(Some(Packet::Disconnect(Disconnect::new(code))));
            }
            let buffered = buf.len();
            match Packet::read(buf, Some(max_size as u32)) {
                // MQTT 5 §3.3.4: a client's PUBLISH carries no Subscription
                // Identifier; rumqttc also miscounts their bytes, so what
                // follows them would be read wrong.
                Ok(Packet::Publish(p))
                    if p.properties
                        .as_ref()
                        .is_some_and(|p| !p.subscription_identifiers.is_empty()) =>
                {
                    Err(CodecError::Malformed(
                        "PUBLISH from a client with a Subscription Identifier".into(),
                    ))
                }
                Ok(packet) => Ok(Some(packet)),
                // rumqttc also says "insufficient bytes" for a truncated
                // property length inside a complete packet, after taking the
                // packet out of `buf`: that packet is malformed.
                Err(V5Error::InsufficientBytes(_)) if buf.len() != buffered => Err(
                    CodecError::Malformed("truncated length inside the packet".into()),
                ),
                Err(V5Error::InsufficientBytes(_)) => Ok(None),
                Err(V5Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
                    Err(CodecError::TooLarge {
                        size: pkt_size,
                        max: max_size,
                    })
                }
                Err(e) => Err(CodecError::Malformed(e.to_string())),
            }
        }
        ProtocolVersion::V311 => match v4::Packet::read(buf, max_size) {
            Ok(packet) => Ok(Some(from_v4(packet)?)),
            Err(m4::Error::InsufficientBytes(_)) => Ok(None),
            Err(m4::Error::PayloadSizeLimitExceeded(size)) => Err(CodecError::TooLarge {
                size,
                max: max_size,
            }),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
        },
    }
}

/// Encodes `packet` for a client of `version` and appends it to `buf`.
///
/// Packets that have no 3.1.1 form (a server DISCONNECT, a negative PUBACK)
/// write nothing for a 3.1.1 client; the caller decides what to do instead.
pub fn write(
    version: ProtocolVersion,
    packet: &Packet,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    let result = match version {
        // rumqttc writes a stray property-length byte after a short
        // DISCONNECT; the 3-byte form is what MQTT 5 §3.14.2.2 allows.
        ProtocolVersion::V5 => match packet {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties: None,
            }) => {
                buf.extend_from_slice(&[0xE0, 0x01, *reason_code as u8]);
                Ok(())
            }
            _ => packet.write(buf, None).map(drop).map_err(|e| e.to_string()),
        },
        ProtocolVersion::V311 => match to_v4(packet) {
            Some(p) => p
                .write(buf, usize::MAX)
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Ok(()),
        },
    };
    result.map_err(CodecError::Malformed)
}

fn qos_from_v4(qos: m4::QoS) -> QoS {
    match qos {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to_v4(qos: QoS) -> m4::QoS {
    match qos {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

fn from_v4(packet: v4::Packet) -> Result<Packet, CodecError> {
    Ok(match packet {
        v4::Packet::Connect(c) => Packet::Connect(
            Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                clean_start: c.clean_session,
                properties: None,
            },
            c.last_will.map(|w| LastWill {
                topic: Bytes::from(w.topic),
                message: w.message,
                qos: qos_from_v4(w.qos),
                retain: w.retain,
                properties: None,
            }),
            c.login.map(|l| Login {
                username: l.username,
                password: l.password,
            }),
        ),
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos_from_v4(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(p) => Packet::PubAck(PubAck::new(p.pkid, None)),
        v4::Packet::PubRec(p) => Packet::PubRec(PubRec::new(p.pkid, None)),
        v4::Packet::PubRel(p) => Packet::PubRel(PubRel::new(p.pkid, None)),
        v4::Packet::PubComp(p) => Packet::PubComp(PubComp::new(p.pkid, None)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Filter::new(f.path, qos_from_v4(f.qos)))
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => Packet::PingReq(PingReq),
        v4::Packet::Disconnect => {
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
        }
        other => {
            return Err(CodecError::Malformed(format!(
                "a client may not send {other:?}"
            )))
        }
    })
}

fn to_v4(packet: &Packet) -> Option<v4::Packet> {
    Some(match packet {
        Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck::new(
            match c.code {
                ConnectReturnCode::Success => v4::ConnectReturnCode::Success,
                ConnectReturnCode::UnsupportedProtocolVersion
                | ConnectReturnCode::RefusedProtocolVersion => {
                    v4::ConnectReturnCode::RefusedProtocolVersion
                }
                ConnectReturnCode::ClientIdentifierNotValid | ConnectReturnCode::BadClientId => {
                    v4::ConnectReturnCode::BadClientId
                }
                ConnectReturnCode::BadUserNamePassword => {
                    v4::ConnectReturnCode::BadUserNamePassword
                }
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::Banned => {
                    v4::ConnectReturnCode::NotAuthorized
                }
                _ => v4::ConnectReturnCode::ServiceUnavailable,
            },
            c.session_present,
        )),
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to_v4(p.qos),
            retain: p.retain,
            // Topics are validated as UTF-8 when they enter the broker.
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(p)
            if p.reason == PubAckReason::Success
                || p.reason == PubAckReason::NoMatchingSubscribers =>
        {
            v4::Packet::PubAck(v4::PubAck::new(p.pkid))
        }
        Packet::PubRec(p)
            if matches!(
                p.reason,
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers
            ) =>
        {
            v4::Packet::PubRec(v4::PubRec::new(p.pkid))
        }
        Packet::PubRel(p) => v4::Packet::PubRel(v4::PubRel::new(p.pkid)),
        Packet::PubComp(p) => v4::Packet::PubComp(v4::PubComp::new(p.pkid)),
        Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck::new(
            s.pkid,
            s.return_codes
                .iter()
                .map(|code| match code {
                    SubscribeReasonCode::Success(q) => {
                        v4::SubscribeReasonCode::Success(qos_to_v4(*q))
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck::new(u.pkid)),
        Packet::PingResp(_) => v4::Packet::PingResp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_v4(packet: v4::Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, usize::MAX).unwrap();
        buf
    }

    #[test]
    fn sniffs_versions_and_waits_for_bytes() {
        let mut connect = v4::Connect::new("dev-1");
        connect.keep_alive = 30;
        let buf = encode_v4(v4::Packet::Connect(connect));
        assert_eq!(sniff_protocol(&buf).unwrap(), Some(ProtocolVersion::V311));
        for cut in 0..9 {
            assert_eq!(sniff_protocol(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut v5 = BytesMut::new();
        Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: "dev-1".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        )
        .write(&mut v5, None)
        .unwrap();
        assert_eq!(sniff_protocol(&v5).unwrap(), Some(ProtocolVersion::V5));
        assert!(matches!(
            sniff_protocol(&[0x30, 0]),
            Err(CodecError::NotConnect)
        ));
        assert!(matches!(
            sniff_protocol(b"\x10\x0c\x00\x06MQIsdp\x03"),
            Err(CodecError::UnsupportedProtocol(3))
        ));
    }

    #[test]
    fn v4_publish_round_trips_through_v5_types() {
        let mut publish =
            v4::Publish::new("devices/a/up/scan", m4::QoS::AtLeastOnce, b"hi".to_vec());
        publish.pkid = 7;
        let mut buf = encode_v4(v4::Packet::Publish(publish));
        let packet = read(ProtocolVersion::V311, &mut buf, 1024)
            .unwrap()
            .unwrap();
        let Packet::Publish(p) = &packet else {
            panic!("{packet:?}")
        };
        assert_eq!(
            (&p.topic[..], &p.payload[..], p.pkid, p.qos),
            (&b"devices/a/up/scan"[..], &b"hi"[..], 7, QoS::AtLeastOnce)
        );
        let mut out = BytesMut::new();
        write(ProtocolVersion::V311, &packet, &mut out).unwrap();
        assert_eq!(
            out,
            encode_v4(v4::Packet::Publish({
                let mut p =
                    v4::Publish::new("devices/a/up/scan", m4::QoS::AtLeastOnce, b"hi".to_vec());
                p.pkid = 7;
                p
            }))
        );
    }

    #[test]
    fn partial_oversized_and_garbage_input() {
        let mut publish = v4::Publish::new("t", m4::QoS::AtMostOnce, vec![0u8; 100]);
        publish.pkid = 0;
        let full = encode_v4(v4::Packet::Publish(publish));
        let mut part = BytesMut::from(&full[..10]);
        assert!(read(ProtocolVersion::V311, &mut part, 1024)
            .unwrap()
            .is_none());
        let mut big = full.clone();
        assert!(matches!(
            read(ProtocolVersion::V311, &mut big, 50),
            Err(CodecError::TooLarge { .. })
        ));
        let mut garbage = BytesMut::from(&[0xF0u8, 0x00][..]);
        assert!(read(ProtocolVersion::V311, &mut garbage, 1024).is_err());
        let mut empty_disconnect = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(
            read(ProtocolVersion::V5, &mut empty_disconnect, 1024).unwrap(),
            Some(Packet::Disconnect(_))
        ));
    }

    #[test]
    fn truncated_v5_property_length_is_malformed_not_incomplete() {
        // Found by fuzz/ (mqtt_decode): complete packets whose property
        // length varint stops at the end of the packet. rumqttc reports
        // "insufficient bytes" after taking the packet out of the buffer, so
        // this was Ok(None) ("wait for more") with the packet silently gone.
        for bytes in [
            &[0xB6u8, 0x03, 0x00, 0xFF, 0xFF, 0x0A][..], // UNSUBACK, then a byte
            &[0x30, 0x04, 0x00, 0x01, b'a', 0xFF],       // PUBLISH "a", QoS 0
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(
                matches!(
                    read(ProtocolVersion::V5, &mut buf, 1024),
                    Err(CodecError::Malformed(_))
                ),
                "{bytes:02x?}"
            );
        }
        // An incomplete packet still waits, and keeps its bytes.
        let mut part = BytesMut::from(&[0x30u8, 0x04, 0x00, 0x01][..]);
        assert!(read(ProtocolVersion::V5, &mut part, 1024)
            .unwrap()
            .is_none());
        assert_eq!(part.len(), 4);
    }

    #[test]
    fn v5_publish_with_subscription_identifiers_is_refused() {
        // Found by fuzz/ (mqtt_decode): rumqttc counts each Subscription
        // Identifier one byte too long, so a PUBLISH with several read fewer
        // identifiers and the rest of its properties as payload. A client may
        // not send them at all (MQTT 5 §3.3.4).
        let mut buf = BytesMut::from(
            &[
                0x32, 0x0F, 0x00, 0x01, b't', 0x00, 0x07, // PUBLISH QoS 1 "t", pkid 7
                0x08, 0x0B, 0x01, 0x0B, 0x02, 0x0B, 0x03, 0x0B, 0x04, // 4 subscription ids
                b'p', // payload
            ][..],
        );
        assert!(
            matches!(
                read(ProtocolVersion::V5, &mut buf, 1024),
                Err(CodecError::Malformed(_))
            ),
            "refused"
        );
    }

    #[test]
    fn short_v5_disconnect_round_trips() {
        let mut out = BytesMut::new();
        let packet = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::KeepAliveTimeout));
        write(ProtocolVersion::V5, &packet, &mut out).unwrap();
        assert_eq!(&out[..], &[0xE0, 0x01, 0x8D]);
        assert_eq!(
            read(ProtocolVersion::V5, &mut out, 1024).unwrap(),
            Some(packet)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn negative_acks_have_no_v311_form() {
        let mut ack = PubAck::new(3, None);
        ack.reason = PubAckReason::UnspecifiedError;
        let mut out = BytesMut::new();
        write(ProtocolVersion::V311, &Packet::PubAck(ack), &mut out).unwrap();
        assert!(out.is_empty());
    }
}
