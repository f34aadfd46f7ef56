//! Test support: a real Kafka started by the project's own script, and the
//! real `herald` binary started with a config written for the test.
#![allow(dead_code)]

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const FLEET_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `deploy/kafka/kafka.sh <command>` for the instance on `port`.
pub fn kafka_script(port: u16, command: &str) {
    kafka_script_with(port, command, &[]);
}

/// `kafka_script` with more of kafka.sh's environment (`KAFKA_EXTRA_PROPS`, ...).
pub fn kafka_script_with(port: u16, command: &str, env: &[(&str, &str)]) {
    let status = Command::new("bash")
        .arg(repo_root().join("deploy/kafka/kafka.sh"))
        .arg(command)
        .envs(env.iter().copied())
        .env("KAFKA_PORT", port.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("deploy/kafka/kafka.sh runs");
    assert!(status.success(), "kafka.sh {command} (port {port}) failed");
}

/// The shared test Kafka on 127.0.0.1:9092, started (or reused) once per test binary.
pub fn kafka() -> String {
    static STARTED: OnceLock<String> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            let port: u16 = std::env::var("HERALD_TEST_KAFKA_PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(9092);
            kafka_script(port, "start");
            format!("127.0.0.1:{port}")
        })
        .clone()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A `herald run` process with its own ports and Kafka topics.
pub struct Herald {
    child: Child,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    /// Kafka topic prefix of this instance's uplink rules: `<prefix>.scan` etc.
    pub topic_prefix: String,
    pub config_path: PathBuf,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Herald {
    /// Starts Herald in device-auth mode against `bootstrap`; `extra` holds
    /// lines for the `[broker]`, `[broker.auth]` and `[kafka]` tables, each
    /// group after a `# broker`, `# auth` or `# kafka` line.
    pub fn start(bootstrap: &str, extra: &str) -> Herald {
        Self::start_with(bootstrap, extra, &unique("t"), free_port())
    }

    /// Starts Herald with a given topic prefix and MQTT port: the same
    /// values restart "the same" Herald after a crash.
    pub fn start_with(bootstrap: &str, extra: &str, topic_prefix: &str, mqtt_port: u16) -> Herald {
        let dir = TempDir(std::env::temp_dir().join(unique("herald-test-")));
        std::fs::create_dir_all(&dir.0).unwrap();
        let mqtt: SocketAddr = format!("127.0.0.1:{mqtt_port}").parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let topic_prefix = topic_prefix.to_string();
        let config = format!(
            r#"
[broker]
listen = "{mqtt}"
{broker_extra}
[broker.auth]
fleet_key = "{FLEET_KEY}"
{auth_extra}
[http]
listen = "{http}"

[kafka]
bootstrap_servers = "{bootstrap}"
uplink_rules = [
  {{ mqtt_topic = "devices/{{device_id}}/up/scan", kafka_topic = "{topic_prefix}.scan" }},
  {{ mqtt_topic = "devices/{{device_id}}/up/print-status", kafka_topic = "{topic_prefix}.print-status" }},
]
{kafka_extra}
[kafka.downlink]
topic = "{topic_prefix}.downlink"
receipts_topic = "{topic_prefix}.receipts"
group_id = "{topic_prefix}-downlink"

[kafka.presence]
topic = "{topic_prefix}.presence"
"#,
            broker_extra = section(extra, "broker"),
            auth_extra = section(extra, "auth"),
            kafka_extra = section(extra, "kafka"),
        );
        let config_path = dir.0.join("herald.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info,herald_broker=debug,herald_bridge=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald starts");
        // Forward Herald's log (stdout) and errors to the test output (shown on failure).
        let port = mqtt.port();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[herald :{port}] {line}");
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[herald :{port}] {line}");
            }
        });
        let herald = Herald {
            child,
            mqtt,
            http,
            topic_prefix,
            config_path,
            _dir: dir,
        };
        herald.wait_for_listener();
        herald
    }

    /// Waits until the MQTT and the HTTP listener accept: Herald opens the
    /// HTTP one a little later, and a test that reads `/metrics` right after
    /// its first MQTT exchange would otherwise read nothing.
    fn wait_for_listener(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (port, what) in [(self.mqtt, "MQTT"), (self.http, "HTTP")] {
            while TcpStream::connect(port).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "herald did not open its {what} port"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until `/readyz` answers 200 (Kafka reachable).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.http_get("/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "herald never became ready");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Minimal HTTP/1.0 GET: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(self.http) else {
            return (0, String::new());
        };
        let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    /// Value of one metric sample line, e.g. `herald_auth_failures_total{reason="bad_signature"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// The sum of every sample of metric `name`, whatever its labels.
    pub fn metric_sum(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn password(&self, device_id: &str) -> String {
        device_password(device_id)
    }

    /// One QoS 1 scan uplink by mosquitto_pub as `device`, with its
    /// credentials, to MQTT `port` (this Herald's, or a relay's in front of it).
    pub fn mosquitto_scan(&self, port: u16, device: &str, message: &str) -> std::process::Output {
        run(Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-i", device, "-u", device, "-P", &self.password(device)])
            .args(["-t", &format!("devices/{device}/up/scan"), "-m", message]))
    }

    /// This instance's Kafka topic `<prefix>.<name>`, e.g. `topic("receipts")`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.topic_prefix)
    }

    /// SIGKILL, as a crash would.
    pub fn crash(&mut self) {
        self.kill();
    }

    /// SIGTERM, as Kubernetes stops a pod; waits until the process exited.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Extracts the lines of `extra` under `# <name>` markers.
fn section(extra: &str, name: &str) -> String {
    let marker = format!("# {name}");
    let mut out = String::new();
    let mut inside = false;
    for line in extra.lines() {
        if line.trim().starts_with("# ") {
            inside = line.trim() == marker;
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

pub fn device_password(device_id: &str) -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(FLEET_KEY)
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    herald_identity::FleetKey::new(&key)
        .device_secret(device_id)
        .password(device_id, now)
}

/// Produces one record and waits for Kafka's acknowledgement.
pub async fn produce(bootstrap: &str, topic: &str, key: &str, payload: &[u8]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
}

/// A record read back from Kafka.
#[derive(Debug)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A consumer of its own group that reads `topic` from the beginning.
pub fn reader(bootstrap: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("test-reader-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads `topic` from the beginning until `want` records arrived or `wait` passed.
pub async fn consume(bootstrap: &str, topic: &str, want: usize, wait: Duration) -> Vec<Record> {
    let consumer = reader(bootstrap, topic);
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while records.len() < want {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(error)) => eprintln!("consumer: {error}"),
            Ok(Ok(message)) => records.push(Record {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers: message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        }
    }
    records
}

/// Reads receipts until every command in `ids` has a delivered one;
/// returns the receipts per command.
pub async fn delivered_receipts(
    bootstrap: &str,
    topic: &str,
    ids: &std::collections::HashSet<String>,
) -> std::collections::HashMap<String, Vec<herald_schemas::v1::DeliveryReceipt>> {
    use herald_schemas::v1::{DeliveryOutcome, DeliveryReceipt};
    use herald_schemas::Message as _;
    let mut by_command: std::collections::HashMap<String, Vec<DeliveryReceipt>> =
        Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        by_command.clear();
        for record in consume(bootstrap, topic, usize::MAX, Duration::from_secs(5)).await {
            let receipt = DeliveryReceipt::decode(&record.payload[..]).expect("a receipt");
            by_command
                .entry(receipt.command_id.clone())
                .or_default()
                .push(receipt);
        }
        let delivered = ids
            .iter()
            .filter(|id| {
                by_command.get(*id).is_some_and(|receipts| {
                    receipts
                        .iter()
                        .any(|r| r.outcome() == DeliveryOutcome::Delivered)
                })
            })
            .count();
        if delivered == ids.len() {
            return by_command;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} of {} commands have a delivered receipt",
            ids.len()
        );
    }
}

/// Runs a client tool (mosquitto_pub, python3, ...) to completion with no
/// stdin and prints what it said, for the test log.
pub fn run(command: &mut std::process::Command) -> std::process::Output {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (run scripts/install-deps.sh)"));
    eprintln!(
        "{command:?}: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Consumer services wired to this Herald's topics.
pub fn services_config(
    herald: &Herald,
    bootstrap: &str,
) -> herald_consumers::config::ConsumersConfig {
    let mut c = herald_consumers::config::ConsumersConfig::default();
    c.kafka.bootstrap_servers = bootstrap.into();
    c.kafka.downlink_topic = herald.topic("downlink");
    c.kafka.receipts_topic = herald.topic("receipts");
    c.kafka.dead_letter_topic = herald.topic("deadletter");
    c.announcer.input_topic = herald.topic("payments");
    c.announcer.group_id = herald.topic("announcer");
    c.print_dispatcher.jobs_topic = herald.topic("print.jobs");
    c.print_dispatcher.status_uplink_topic = herald.topic("print-status");
    c.print_dispatcher.job_status_topic = herald.topic("print.status");
    c.print_dispatcher.group_id = herald.topic("print-dispatcher");
    c.scan_processor.input_topic = herald.topic("scan");
    c.scan_processor.validated_topic = herald.topic("payment.scans");
    c.scan_processor.group_id = herald.topic("scan-processor");
    c
}

/// Runs `service` in this process until the guard is dropped.
pub fn run_service(
    service: herald_consumers::Service,
    config: &herald_consumers::config::ConsumersConfig,
) -> tokio_util::sync::DropGuard {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (config, token) = (config.clone(), shutdown.clone());
    tokio::spawn(async move {
        herald_consumers::run(service, &config, &prometheus::Registry::new(), token)
            .await
            .expect("service runs");
    });
    shutdown.drop_guard()
}
