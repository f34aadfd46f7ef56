//! The MQTT decoder on arbitrary client bytes, as a connection reads them:
//! `codec::sniff_protocol` on the first bytes, then `codec::read` in a loop
//! until it needs more bytes or refuses, for MQTT 3.1.1 and 5 (properties
//! included), with a large and a small maximum packet size.
//!
//! Checked besides "no panic":
//! - `Ok(None)` leaves the buffer untouched and a decoded packet consumes bytes;
//! - the same bytes fed in small chunks decode to the same packets and end the
//!   same way (a connection reads whatever the socket hands it);
//! - every decoded packet re-encodes with `codec::write` for both versions
//!   without panicking, and what it writes decodes back to the same packet
//!   (exactly for its own version; topic, payload and flags of a PUBLISH across
//!   versions, which is how the broker forwards a message to a subscriber).
#![no_main]

use bytes::BytesMut;
use herald_broker::codec::{self, CodecError, Packet, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];
const LARGE_MAX: usize = 1 << 20;
const SMALL_MAX: usize = 64;

#[derive(Debug, PartialEq)]
enum End {
    NeedMore,
    TooLarge,
    Refused,
}

fn end_of(e: &CodecError) -> End {
    match e {
        CodecError::TooLarge { .. } => End::TooLarge,
        _ => End::Refused,
    }
}

/// Decodes `buf` packet by packet until `read` wants more bytes or refuses.
fn decode_all(
    version: ProtocolVersion,
    buf: &mut BytesMut,
    max: usize,
    packets: &mut Vec<Packet>,
) -> End {
    loop {
        let before = buf.clone();
        match codec::read(version, buf, max) {
            Ok(Some(packet)) => {
                assert!(
                    buf.len() < before.len(),
                    "{version:?}: a decoded packet consumed no bytes: {packet:?}"
                );
                packets.push(packet);
            }
            Ok(None) => {
                assert_eq!(
                    *buf, before,
                    "{version:?}: Ok(None) (need more bytes) changed the buffer"
                );
                return End::NeedMore;
            }
            Err(e) => return end_of(&e),
        }
    }
}

/// The same stream fed `chunk` bytes at a time.
fn decode_chunked(
    version: ProtocolVersion,
    data: &[u8],
    chunk: usize,
    max: usize,
) -> (Vec<Packet>, End) {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        match decode_all(version, &mut buf, max, &mut packets) {
            End::NeedMore => {}
            end => return (packets, end),
        }
    }
    (packets, End::NeedMore)
}

fn reencode(source: ProtocolVersion, packet: &Packet) {
    for target in VERSIONS {
        let mut out = BytesMut::new();
        if codec::write(target, packet, &mut out).is_err() || out.is_empty() {
            continue;
        }
        let written = out.clone();
        let again = codec::read(target, &mut out, usize::MAX >> 1);
        let again = match again {
            Ok(Some(p)) => p,
            // A packet only a server sends has no client-side 3.1.1 decoding.
            Err(_) if target == ProtocolVersion::V311 && !is_client_packet(packet) => continue,
            other => panic!(
                "{packet:?} written for {target:?} as {written:02x?} does not decode: {other:?}"
            ),
        };
        assert!(out.is_empty(), "{target:?}: bytes left after re-reading {packet:?}");
        if target == source {
            assert_eq!(&again, packet, "{target:?} round trip of {written:02x?}");
        } else if let (Packet::Publish(a), Packet::Publish(b)) = (packet, &again) {
            // 3.1.1 topics are strings; the broker only forwards UTF-8 topics.
            if std::str::from_utf8(&a.topic).is_ok() {
                assert_eq!(
                    (&a.topic, &a.payload, a.qos, a.retain, a.dup, a.pkid),
                    (&b.topic, &b.payload, b.qos, b.retain, b.dup, b.pkid),
                    "PUBLISH from {source:?} forwarded as {target:?}"
                );
            }
        }
    }
}

fn is_client_packet(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::Connect(..)
            | Packet::Publish(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq(_)
            | Packet::Disconnect(_)
    )
}

fuzz_target!(|data: &[u8]| {
    // What a new connection does first.
    // Once the first bytes decide the version (or refuse), more bytes must
    // not change the answer.
    let sniffed = format!("{:?}", codec::sniff_protocol(data));
    for cut in 0..data.len().min(300) {
        let early = codec::sniff_protocol(&data[..cut]);
        if !matches!(early, Ok(None)) {
            assert_eq!(format!("{early:?}"), sniffed, "sniffed from {cut} bytes");
            break;
        }
    }
    // Every later packet is decoded with the sniffed version, and a fuzzer
    // stream need not start with CONNECT: decode with both.
    for version in VERSIONS {
        for max in [LARGE_MAX, SMALL_MAX] {
            let mut buf = BytesMut::from(data);
            let mut packets = Vec::new();
            let end = decode_all(version, &mut buf, max, &mut packets);
            if max == LARGE_MAX {
                for packet in &packets {
                    reencode(version, packet);
                }
            }
            // Chunk size from the input, so that the fuzzer varies it.
            let chunk = 1 + data.first().map_or(0, |b| usize::from(b % 7));
            let (chunked, chunked_end) = decode_chunked(version, data, chunk, max);
            assert_eq!(chunked, packets, "{version:?} in chunks of {chunk}");
            assert_eq!(chunked_end, end, "{version:?} in chunks of {chunk}");
        }
    }
});
