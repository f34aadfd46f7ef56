//! Kafka over TLS: Herald's producers and consumers reach a Kafka listener
//! that speaks only TLS (`security.protocol = "ssl"`, the broker's
//! certificate checked against a CA given by `ssl.ca.location`), and an
//! uplink from mosquitto_pub lands in Kafka. Uses its own Kafka instance
//! (PLAINTEXT on 19492 for the test's own reading, SSL on 19493 for Herald),
//! with certificates made by the openssl command for this run.

mod common;

use common::{consume, kafka_script, kafka_script_with, run, Herald, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PORT: u16 = 19492;
const TLS_PORT: u16 = 19493;

struct StopOnDrop;

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        kafka_script(PORT, "stop");
    }
}

/// A CA, and a certificate it signed for 127.0.0.1 with its PKCS#8 key, in
/// one PEM file as Kafka's PEM keystore wants them.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = run(Command::new("openssl").current_dir(dir).args(args));
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=herald-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "server.key",
        "-out",
        "server.p8",
    ]);
    let keystore = [
        std::fs::read_to_string(dir.join("server.p8")).unwrap(),
        std::fs::read_to_string(dir.join("server.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("keystore.pem"), keystore).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn uplinks_reach_kafka_over_tls() {
    let dir = TempDir(std::env::temp_dir().join(common::unique("herald-kafka-tls-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    make_certificates(&dir.0);
    let listeners = format!(
        "listeners=PLAINTEXT://127.0.0.1:{PORT},SSL://127.0.0.1:{TLS_PORT},CONTROLLER://127.0.0.1:{}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{PORT},SSL://127.0.0.1:{TLS_PORT}\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,CONTROLLER:PLAINTEXT\n\
         ssl.keystore.type=PEM\n\
         ssl.keystore.location={}\n",
        PORT + 10000,
        dir.0.join("keystore.pem").display()
    );
    kafka_script_with(PORT, "start", &[("KAFKA_EXTRA_PROPS", &listeners)]);
    let _stop = StopOnDrop;

    let ca = dir.0.join("ca.pem");
    let tls_options = format!(
        "\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n",
        ca.display()
    );
    let herald = Herald::start(
        &format!("127.0.0.1:{TLS_PORT}"),
        &format!(
            "# kafka\n[kafka.producer_options]\n{tls_options}[kafka.consumer_options]\n{tls_options}"
        ),
    );
    herald.wait_ready();

    let device = "tls-kafka-speaker";
    let output = herald.mosquitto_scan(herald.mqtt.port(), device, "over TLS");
    assert!(
        output.status.success(),
        "PUBACK after Kafka took it over TLS"
    );
    let records = consume(
        &format!("127.0.0.1:{PORT}"),
        &format!("{}.scan", herald.topic_prefix),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(records[0].payload, b"over TLS");
}
