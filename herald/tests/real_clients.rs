//! MQTT clients nobody here wrote: mosquitto_pub/mosquitto_sub (Debian's
//! mosquitto-clients) and the paho-mqtt Python client, against `herald`.

mod common;

use common::{consume, kafka, run, Herald};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_with_device_credentials_reaches_kafka() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let device = "mosq-speaker-1";
    for version in ["mqttv311", "mqttv5"] {
        let output = run(Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &herald.mqtt.port().to_string(),
                "-V",
                version,
                "-q",
                "1",
            ])
            .args(["-i", device, "-u", device, "-P", &herald.password(device)])
            .args([
                "-t",
                &format!("devices/{device}/up/scan"),
                "-m",
                &format!("scan via {version}"),
            ]));
        assert!(output.status.success(), "mosquitto_pub {version} failed");
    }
    let records = consume(
        &bootstrap,
        &format!("{}.scan", herald.topic_prefix),
        2,
        Duration::from_secs(30),
    )
    .await;
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    assert_eq!(payloads, ["scan via mqttv311", "scan via mqttv5"]);
    assert!(records
        .iter()
        .all(|r| r.key.as_deref() == Some(device.as_bytes())));

    // A wrong password is refused with the reason the client understands.
    let output = run(Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &herald.mqtt.port().to_string(),
            "-q",
            "1",
        ])
        .args(["-i", device, "-u", device, "-P", "v1.0.bad"])
        .args(["-t", &format!("devices/{device}/up/scan"), "-m", "x"]));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .to_lowercase()
        .contains("not authori"));
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_and_pub_as_a_general_broker() {
    let herald = Herald::start(&kafka(), "# auth\nmode = \"open\"\n");
    let port = herald.mqtt.port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "shop/+/orders",
            "-q",
            "1",
            "-C",
            "2",
            "-W",
            "20",
            "-v",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (scripts/install-deps.sh installs it)");
    std::thread::sleep(Duration::from_millis(700));
    for (i, version) in ["mqttv311", "mqttv5"].iter().enumerate() {
        let output = run(Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-q",
            "1",
            "-t",
            "shop/7/orders",
            "-m",
            &format!("order {i}"),
        ]));
        assert!(output.status.success());
    }
    // A retained message reaches a subscriber that comes later.
    assert!(run(Command::new("mosquitto_pub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-r",
        "-t",
        "shop/7/menu",
        "-m",
        "noodles"
    ]))
    .status
    .success());
    let output = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "shop/7/orders order 0\nshop/7/orders order 1\n"
    );
    let retained = run(Command::new("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "shop/7/menu",
        "-C",
        "1",
        "-W",
        "10",
    ]));
    assert_eq!(String::from_utf8_lossy(&retained.stdout), "noodles\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_outside_its_namespace_is_denied() {
    let herald = Herald::start(&kafka(), "");
    let device = "mosq-printer-2";
    let output = run(Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &herald.mqtt.port().to_string(),
            "-V",
            "mqttv5",
        ])
        .args(["-i", device, "-u", device, "-P", &herald.password(device)])
        .args(["-t", "devices/other-printer/down/#", "-C", "1", "-W", "5"]));
    // mosquitto_sub 2.0 reports the refusal and exits (its status is 0 then).
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("All subscription requests were denied")
    );
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn paho_python_client_v311_and_v5() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let device = "paho-scanbox-1";
    let script = common::repo_root().join("herald/tests/paho_client.py");
    let output = run(Command::new("python3").arg(script).args([
        "--port",
        &herald.mqtt.port().to_string(),
        "--device",
        device,
        "--password",
        &herald.password(device),
    ]));
    assert!(output.status.success(), "paho checks failed");
    let records = consume(
        &bootstrap,
        &format!("{}.scan", herald.topic_prefix),
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(records.len(), 2, "both paho publishes are in Kafka");
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_over_tls() {
    let dir = common::TempDir(std::env::temp_dir().join(common::unique("herald-tls-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (cert, key) = (dir.0.join("server.crt"), dir.0.join("server.key"));
    let made = run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(made.status.success(), "openssl makes a test certificate");
    let tls_port = common::free_port();
    let herald = Herald::start(
        &kafka(),
        &format!(
            "# broker\ntls = {{ listen = \"127.0.0.1:{tls_port}\", cert_path = \"{}\", key_path = \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
    );
    herald.wait_ready();
    let device = "tls-speaker-1";
    let output = run(Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &tls_port.to_string(), "--cafile"])
        .arg(&cert)
        .args([
            "-q",
            "1",
            "-i",
            device,
            "-u",
            device,
            "-P",
            &herald.password(device),
        ])
        .args(["-t", &format!("devices/{device}/up/scan"), "-m", "over tls"]));
    assert!(
        output.status.success(),
        "QoS 1 publish over TLS acknowledged"
    );
    let records = consume(
        &kafka(),
        &format!("{}.scan", herald.topic_prefix),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        records.first().map(|r| r.payload.as_slice()),
        Some(&b"over tls"[..])
    );
}

/// Behind a load balancer that sends PROXY protocol v2 (`broker.proxy_protocol`):
/// mosquitto_pub connects through a relay that writes the header first, as
/// an AWS NLB does, and its uplink reaches Kafka; a direct connection is closed.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_behind_a_proxy_protocol_load_balancer() {
    use ppp::v2::{Builder, Command as ProxyCommand, Protocol, Version};
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "# broker\nproxy_protocol = true\n");
    herald.wait_ready();
    let load_balancer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = load_balancer.local_addr().unwrap().port();
    let upstream = herald.mqtt;
    tokio::spawn(async move {
        while let Ok((mut terminal, source)) = load_balancer.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut node = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let header = Builder::with_addresses(
                    Version::Two | ProxyCommand::Proxy,
                    Protocol::Stream,
                    (source, upstream),
                )
                .build()
                .unwrap();
                node.write_all(&header).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut terminal, &mut node).await;
            });
        }
    });
    let device = "proxied-speaker-1";
    let publish = |port: u16| herald.mosquitto_scan(port, device, "via the load balancer");
    assert!(
        publish(relay_port).status.success(),
        "through the load balancer"
    );
    let records = consume(
        &bootstrap,
        &format!("{}.scan", herald.topic_prefix),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(records[0].payload, b"via the load balancer");
    // wait_ready's own probe of the MQTT port counted one already.
    let refused = || herald.metric("herald_protocol_errors_total{kind=\"proxy_header\"}");
    let before = refused();
    assert!(
        !publish(herald.mqtt.port()).status.success(),
        "direct, without the header"
    );
    assert_eq!(refused(), before + 1.0);
}
