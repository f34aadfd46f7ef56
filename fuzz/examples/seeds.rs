//! Writes the seed corpus of the packet and payload targets into
//! fuzz/corpus/<target>/ (run from fuzz/: `cargo +nightly run --example seeds`).
//! Packets are encoded with rumqttc's own encoders, so the seeds are valid
//! MQTT 3.1.1 and 5.0; passwords are signed with the fleet key the
//! connect_password target verifies with.

use bytes::{Bytes, BytesMut};
use herald_identity::FleetKey;
use herald_schemas::v1::{CommandAck, PrintState, PrintStatus, ScanResult};
use herald_schemas::Message;
use rumqttc::mqttbytes::{v4, QoS as Q4};
use rumqttc::v5::mqttbytes::v5::*;
use rumqttc::v5::mqttbytes::QoS;
use std::path::Path;

const FLEET_KEY: &[u8] = b"herald-fuzz-fleet-key-0123456789";
const NOW: u64 = 1_790_000_000;

fn v4(packets: Vec<v4::Packet>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        p.write(&mut buf, usize::MAX).unwrap();
    }
    buf.to_vec()
}

fn v5(packets: Vec<Packet>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        p.write(&mut buf, None).unwrap();
    }
    buf.to_vec()
}

fn password(device: &str) -> String {
    FleetKey::new(FLEET_KEY)
        .device_secret(device)
        .password(device, NOW)
}

fn v4_connect(device: &str, password: &str, will: bool) -> v4::Packet {
    let mut c = v4::Connect::new(device);
    c.keep_alive = 60;
    c.clean_session = false;
    c.login = Some(v4::Login::new(device, password));
    if will {
        c.last_will = Some(v4::LastWill::new(
            format!("devices/{device}/up/presence"),
            "offline",
            Q4::AtLeastOnce,
            true,
        ));
    }
    v4::Packet::Connect(c)
}

fn user() -> Vec<(String, String)> {
    vec![("fw".into(), "2.4.1".into())]
}

fn v5_connect(device: &str, password: &str) -> Packet {
    Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: device.into(),
            clean_start: false,
            properties: Some(ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(16),
                max_packet_size: Some(32 * 1024),
                topic_alias_max: Some(4),
                request_response_info: Some(1),
                request_problem_info: Some(1),
                user_properties: user(),
                authentication_method: None,
                authentication_data: None,
            }),
        },
        Some(LastWill {
            topic: Bytes::from(format!("devices/{device}/up/presence")),
            message: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Some(LastWillProperties {
                delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(600),
                content_type: Some("text/plain".into()),
                response_topic: Some(format!("devices/{device}/down/presence")),
                correlation_data: Some(Bytes::from_static(b"c1")),
                user_properties: user(),
            }),
        }),
        Some(Login::new(device, password)),
    )
}

fn v5_publish(device: &str) -> Packet {
    let mut p = Publish::new(
        format!("devices/{device}/up/scan"),
        QoS::AtLeastOnce,
        r#"{"code":"281234567890123456","scannedAtMs":"1790000000000"}"#,
        None,
    );
    p.pkid = 1;
    p.properties = Some(PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(1),
        response_topic: Some(format!("devices/{device}/down/reply")),
        correlation_data: Some(Bytes::from_static(b"42")),
        user_properties: user(),
        subscription_identifiers: vec![],
        content_type: Some("application/json".into()),
    });
    Packet::Publish(p)
}

fn v5_subscribe(device: &str) -> Packet {
    let mut filter = Filter::new(format!("devices/{device}/down/#"), QoS::AtLeastOnce);
    filter.nolocal = true;
    filter.preserve_retain = true;
    filter.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    Packet::Subscribe(Subscribe {
        pkid: 2,
        filters: vec![
            filter,
            Filter::new(format!("devices/{device}/down/+"), QoS::ExactlyOnce),
        ],
        properties: Some(SubscribeProperties {
            id: Some(7),
            user_properties: user(),
        }),
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let dev = "scanbox-0001";
    let pw = password(dev);

    // mqtt_decode: whole client sessions and single packets, both versions.
    let dir = corpus.join("mqtt_decode");
    let mut publish = v4::Publish::new(format!("devices/{dev}/up/scan"), Q4::AtLeastOnce, "281234567890123456");
    publish.pkid = 1;
    let mut publish2 = v4::Publish::new(format!("devices/{dev}/up/print-status"), Q4::ExactlyOnce, vec![0x0a, 0x02, b'j', b'1', 0x10, 0x03]);
    publish2.pkid = 2;
    let mut subscribe = v4::Subscribe::new(format!("devices/{dev}/down/#"), Q4::AtLeastOnce);
    subscribe.pkid = 3;
    let mut unsubscribe = v4::Unsubscribe::new(format!("devices/{dev}/down/#"));
    unsubscribe.pkid = 4;
    write(
        &dir,
        "v311-session",
        &v4(vec![
            v4_connect(dev, &pw, true),
            v4::Packet::Subscribe(subscribe),
            v4::Packet::Publish(publish),
            v4::Packet::Publish(publish2),
            v4::Packet::PubRel(v4::PubRel::new(2)),
            v4::Packet::PubAck(v4::PubAck::new(9)),
            v4::Packet::Unsubscribe(unsubscribe),
            v4::Packet::PingReq,
            v4::Packet::Disconnect,
        ]),
    );
    let mut ack = PubAck::new(9, Some(PubAckProperties {
        reason_string: Some("ok".into()),
        user_properties: user(),
    }));
    ack.reason = PubAckReason::Success;
    let mut rec = PubRec::new(10, None);
    rec.reason = PubRecReason::Success;
    write(
        &dir,
        "v5-session",
        &v5(vec![
            v5_connect(dev, &pw),
            v5_subscribe(dev),
            v5_publish(dev),
            Packet::PubAck(ack),
            Packet::PubRec(rec),
            Packet::PubRel(PubRel::new(10, None)),
            Packet::PubComp(PubComp::new(10, None)),
            Packet::Unsubscribe(Unsubscribe {
                pkid: 5,
                filters: vec![format!("devices/{dev}/down/#")],
                properties: Some(UnsubscribeProperties { user_properties: user() }),
            }),
            Packet::PingReq(PingReq),
        ]),
    );
    write(&dir, "v5-publish-properties", &v5(vec![v5_publish(dev)]));
    write(&dir, "v5-subscribe-options", &v5(vec![v5_subscribe(dev)]));
    write(
        &dir,
        "v5-disconnect-forms",
        &[
            &[0xE0u8, 0x00][..],
            &[0xE0, 0x01, 0x04],
            &v5(vec![Packet::Disconnect(Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
                properties: Some(DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("bye".into()),
                    user_properties: user(),
                    server_reference: None,
                }),
            })]),
        ]
        .concat(),
    );
    write(&dir, "v311-connect-minimal", &v4(vec![v4::Packet::Connect(v4::Connect::new("x"))]));

    // connect_password: CONNECTs with valid, expired and wrong passwords.
    let dir = corpus.join("connect_password");
    write(&dir, "v311-valid", &v4(vec![v4_connect(dev, &pw, true)]));
    write(&dir, "v5-valid", &v5(vec![v5_connect("spk-0042", &password("spk-0042"))]));
    let expired = FleetKey::new(FLEET_KEY)
        .device_secret(dev)
        .password(dev, NOW - 3600);
    write(&dir, "v311-expired", &v4(vec![v4_connect(dev, &expired, false)]));
    write(&dir, "v311-other-device", &v4(vec![v4_connect("prn-7", &pw, false)]));
    write(&dir, "raw-valid", format!("{dev}\n{pw}").as_bytes());
    write(&dir, "raw-malformed", b"spk-001\nv1.17900000x0.AAAA");

    // device_payloads: protobuf, JSON (both field spellings) and bare text.
    let dir = corpus.join("device_payloads");
    let scan = ScanResult {
        code: "281234567890123456".into(),
        scanned_at_ms: 1_790_000_000_000,
        scan_id: "s-1".into(),
    };
    write(&dir, "scan-proto", &scan.encode_to_vec());
    write(&dir, "scan-json", br#" {"code": "134567890123456789", "scannedAtMs": "1790000000000", "scan_id": "s-1"}"#);
    write(&dir, "scan-text", b"6225881234567890123\r\n");
    let status = PrintStatus {
        job_id: "job-7".into(),
        state: PrintState::Failed as i32,
        reason: "out_of_paper".into(),
        at_ms: 1_790_000_000_123,
    };
    write(&dir, "print-status-proto", &status.encode_to_vec());
    write(&dir, "print-status-json", br#"{"jobId":"job-7","state":"PRINT_STATE_FAILED","reason":"out_of_paper","at_ms":1790000000123}"#);
    let ack = CommandAck {
        command_id: "pay-0000000001".into(),
        ok: true,
        error: String::new(),
        at_ms: 1_790_000_000_456,
    };
    write(&dir, "command-ack-proto", &ack.encode_to_vec());
    write(&dir, "command-ack-json", br#"{"commandId":"pay-0000000001","ok":true,"atMs":"1790000000456"}"#);
    println!("seeds written under {}", corpus.display());
}
