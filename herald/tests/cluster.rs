//! Three Herald nodes on one Kafka: commands reach each device on whatever
//! node it is connected to (forwarded through the nodes' inbox topics),
//! including devices that were offline and devices that move between nodes
//! while commands flow; and a node killed with SIGKILL under downlink load
//! loses no command: its devices reconnect to the others, which take over
//! its partitions and its inbox; nor does a node removed by scale-in. A device that connects to another node
//! while its old connection is still open: the old one is closed as taken
//! over, and presence shows the new node only.

mod common;

use common::{consume, delivered_receipts, kafka, unique, Herald};
use herald_loadtest::terminal::{Terminal, TerminalOptions};
use herald_schemas::v1::*;
use herald_schemas::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `count` nodes sharing one set of topics, each with its own node id.
fn start_nodes(bootstrap: &str, prefix: &str, count: usize) -> Vec<Herald> {
    let nodes: Vec<Herald> = (0..count)
        .map(|i| start_node(bootstrap, prefix, i, common::free_port()))
        .collect();
    for node in &nodes {
        node.wait_ready();
    }
    nodes
}

fn start_node(bootstrap: &str, prefix: &str, index: usize, port: u16) -> Herald {
    // A dead node's partitions move after 6 s; orphaned inboxes are looked
    // for every second.
    let extra = format!(
        "# kafka\ncluster = {{ node_id = \"node-{index}\", session_timeout = \"6s\", orphan_check_interval = \"1s\" }}\n"
    );
    Herald::start_with(bootstrap, &extra, prefix, port)
}

async fn terminal(node: &Herald, device_id: &str) -> Terminal {
    let options = TerminalOptions::new(
        "127.0.0.1",
        node.mqtt.port(),
        device_id,
        Some(node.password(device_id)),
    );
    Terminal::connect(options).await.expect("terminal connects")
}

struct Commands {
    producer: FutureProducer,
    topic: String,
}

impl Commands {
    fn new(bootstrap: &str, topic: String) -> Self {
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        Self { producer, topic }
    }

    /// Produces commands `<device>:<i>` for i in `range`, keyed by device.
    async fn send(&self, device: &str, range: std::ops::Range<usize>) -> Vec<String> {
        let mut ids = Vec::new();
        for i in range {
            let command = DownlinkCommand {
                command_id: format!("{device}:{i}"),
                device_id: device.into(),
                kind: CommandKind::Announce as i32,
                payload: Announcement {
                    text: format!("command {i}"),
                    ..Default::default()
                }
                .encode_to_vec(),
                created_at_ms: now_ms(),
                expires_at_ms: now_ms() + 600_000,
            };
            let payload = command.encode_to_vec();
            let record = FutureRecord::to(&self.topic).key(device).payload(&payload);
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("command produced");
            ids.push(command.command_id);
        }
        ids
    }
}

/// Receives until every id in `want` arrived at `terminal`.
async fn receive_all(terminal: &mut Terminal, want: &[String], received: &mut HashSet<String>) {
    while !want.iter().all(|id| received.contains(id)) {
        let command = terminal
            .next_command(Duration::from_secs(90))
            .await
            .unwrap_or_else(|| {
                let missing: Vec<_> = want.iter().filter(|id| !received.contains(*id)).collect();
                panic!(
                    "{}: commands never arrived: {missing:?}",
                    terminal.device_id
                )
            });
        received.insert(command.command_id);
    }
}

/// Every receipt of every command says delivered; returns the duplicates.
fn check_receipts(
    by_command: &HashMap<String, Vec<DeliveryReceipt>>,
    ids: &HashSet<String>,
) -> usize {
    let mut duplicates = 0;
    for id in ids {
        let receipts = &by_command[id];
        for receipt in receipts {
            assert_eq!(
                receipt.outcome(),
                herald_schemas::v1::DeliveryOutcome::Delivered,
                "{id}: {receipt:?}"
            );
        }
        if receipts.len() > 1 {
            eprintln!("{id}: {} receipts", receipts.len());
        }
        duplicates += receipts.len() - 1;
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_find_devices_on_any_node_offline_or_moving() {
    let bootstrap = kafka();
    let prefix = unique("cl");
    let nodes = start_nodes(&bootstrap, &prefix, 3);
    let commands = Commands::new(&bootstrap, format!("{prefix}.downlink"));
    let mut all_ids = HashSet::new();

    // Devices connected to each node.
    let mut connected = Vec::new();
    for i in 0..6 {
        let device = format!("cl-dev-{i}");
        connected.push((device.clone(), terminal(&nodes[i % 3], &device).await));
    }
    for (device, _) in &connected {
        all_ids.extend(commands.send(device, 0..10).await);
    }
    for (device, terminal) in &mut connected {
        let want: Vec<String> = (0..10).map(|i| format!("{device}:{i}")).collect();
        receive_all(terminal, &want, &mut HashSet::new()).await;
    }

    // Offline devices: their commands wait until they connect (to node 2).
    for device in ["cl-off-0", "cl-off-1"] {
        all_ids.extend(commands.send(device, 0..10).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for device in ["cl-off-0", "cl-off-1"] {
        let mut terminal = terminal(&nodes[2], device).await;
        let want: Vec<String> = (0..10).map(|i| format!("{device}:{i}")).collect();
        receive_all(&mut terminal, &want, &mut HashSet::new()).await;
    }

    // A device moving 0 → 1 → 2 while commands flow.
    let mover = "cl-mover";
    let mut received = HashSet::new();
    let mut on_node = terminal(&nodes[0], mover).await;
    let first = commands.send(mover, 0..5).await;
    receive_all(&mut on_node, &first, &mut received).await;
    received.extend(on_node.disconnect().await.into_iter().map(|c| c.command_id));
    let offline = commands.send(mover, 5..10).await;
    let mut on_node = terminal(&nodes[1], mover).await;
    receive_all(&mut on_node, &offline, &mut received).await;
    // Mid-stream: commands produced while the device leaves node 1 for node 2.
    let sending = {
        let commands = Commands::new(&bootstrap, format!("{prefix}.downlink"));
        tokio::spawn(async move { commands.send(mover, 10..40).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    received.extend(on_node.disconnect().await.into_iter().map(|c| c.command_id));
    let mut on_node = terminal(&nodes[2], mover).await;
    let streamed = sending.await.unwrap();
    let pending: Vec<String> = streamed
        .iter()
        .filter(|id| !received.contains(*id))
        .cloned()
        .collect();
    receive_all(&mut on_node, &pending, &mut received).await;
    all_ids.extend(first);
    all_ids.extend(offline);
    all_ids.extend(streamed);

    let receipts = delivered_receipts(&bootstrap, &format!("{prefix}.receipts"), &all_ids).await;
    let duplicates = check_receipts(&receipts, &all_ids);
    let forwarded: f64 = nodes
        .iter()
        .map(|n| n.metric("herald_cluster_forwards_total{result=\"ok\"}"))
        .sum();
    eprintln!(
        "{} commands delivered over 3 nodes, {forwarded} forwards, {duplicates} duplicate receipts",
        all_ids.len()
    );
    assert!(
        forwarded > 0.0,
        "commands for devices on other nodes were forwarded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_under_downlink_load_loses_no_command() {
    let bootstrap = kafka();
    let prefix = unique("ck");
    let mut nodes = start_nodes(&bootstrap, &prefix, 3);
    let devices: Vec<String> = (0..6).map(|i| format!("ck-dev-{i}")).collect();
    let mut terminals = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        terminals.push(Some(terminal(&nodes[i % 3], device).await));
    }
    const PER_DEVICE: usize = 40;
    let sending = {
        let commands = Commands::new(&bootstrap, format!("{prefix}.downlink"));
        let devices = devices.clone();
        tokio::spawn(async move {
            let mut ids = HashSet::new();
            for batch in 0..(PER_DEVICE / 5) {
                for device in &devices {
                    ids.extend(commands.send(device, batch * 5..batch * 5 + 5).await);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            ids
        })
    };
    let mut received: Vec<HashSet<String>> = vec![HashSet::new(); devices.len()];
    // Let commands flow, then kill node 0 mid-stream.
    while received.iter().map(HashSet::len).sum::<usize>() < devices.len() * PER_DEVICE / 4 {
        for (i, terminal) in terminals.iter_mut().enumerate() {
            if let Some(command) = terminal
                .as_mut()
                .unwrap()
                .next_command(Duration::from_millis(50))
                .await
            {
                received[i].insert(command.command_id);
            }
        }
    }
    nodes[0].crash();
    eprintln!("killed node-0 with SIGKILL");
    // Its devices reconnect to the others, as behind a load balancer.
    for i in (0..devices.len()).filter(|i| i % 3 == 0) {
        // What the dead node delivered (and the terminal acknowledged) before
        // it died, not read by the test yet.
        let mut old = terminals[i].take().unwrap();
        while let Some(command) = old.next_command(Duration::ZERO).await {
            received[i].insert(command.command_id);
        }
        drop(old);
        terminals[i] = Some(terminal(&nodes[1 + i % 2], &devices[i]).await);
    }
    let mut ids = sending.await.unwrap();
    // Commands left in the dead node's inbox (as forwarded just before it
    // died) are handled by the node that adopts the inbox.
    let orphaned = Commands::new(&bootstrap, format!("{prefix}.downlink.inbox.node-0"));
    ids.extend(orphaned.send(&devices[0], 1000..1010).await);
    for (i, device) in devices.iter().enumerate() {
        let want: Vec<String> = ids
            .iter()
            .filter(|id| id.starts_with(&format!("{device}:")))
            .cloned()
            .collect();
        receive_all(terminals[i].as_mut().unwrap(), &want, &mut received[i]).await;
    }
    let receipts = delivered_receipts(&bootstrap, &format!("{prefix}.receipts"), &ids).await;
    let duplicates = check_receipts(&receipts, &ids);
    let adopted: f64 = nodes[1..]
        .iter()
        .map(|n| n.metric("herald_cluster_adopted_inboxes"))
        .sum();
    assert_eq!(adopted, 1.0, "one live node took over node-0's inbox");
    eprintln!(
        "{} commands: 0 lost, {duplicates} duplicate receipts after the kill",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_newest_connection_wins_across_nodes() {
    use tokio::io::AsyncBufReadExt as _;
    let bootstrap = kafka();
    let prefix = unique("ct");
    let nodes = start_nodes(&bootstrap, &prefix, 2);
    let device = "ct-speaker";
    // An MQTT 5 terminal on node 0 that stays connected...
    let mut old = tokio::process::Command::new("python3")
        .arg(common::repo_root().join("herald/tests/paho_taken_over.py"))
        .args(["--port", &nodes[0].mqtt.port().to_string()])
        .args(["--device", device, "--password", &nodes[0].password(device)])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the paho terminal");
    let mut lines = tokio::io::BufReader::new(old.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("CONNECTED")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...while the device connects again, to node 1.
    let mut new = terminal(&nodes[1], device).await;
    let said = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the old connection is closed")
        .unwrap();
    assert_eq!(
        said.as_deref(),
        Some("DISCONNECTED 142"),
        "0x8E session taken over"
    );
    assert_eq!(nodes[0].metric("herald_cluster_takeovers_total"), 1.0);

    // The device's latest presence record is its connection on node 1.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = consume(
        &bootstrap,
        &format!("{prefix}.presence"),
        usize::MAX,
        Duration::from_secs(5),
    )
    .await;
    let latest = records
        .iter()
        .rfind(|r| r.key.as_deref() == Some(device.as_bytes()))
        .map(|r| PresenceEvent::decode(&r.payload[..]).unwrap())
        .expect("presence records");
    assert!(latest.online && latest.node == "node-1", "{latest:?}");

    // Commands reach it on node 1.
    let commands = Commands::new(&bootstrap, format!("{prefix}.downlink"));
    let ids = commands.send(device, 0..5).await;
    receive_all(&mut new, &ids, &mut HashSet::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_removed_by_scale_in_hands_on_its_commands() {
    let bootstrap = kafka();
    let prefix = unique("cs");
    let mut nodes = start_nodes(&bootstrap, &prefix, 3);
    let commands = Commands::new(&bootstrap, format!("{prefix}.downlink"));
    // Devices last seen on node 2, offline now, with commands waiting.
    let devices = ["cs-dev-0", "cs-dev-1", "cs-dev-2"];
    let mut ids = HashSet::new();
    for device in devices {
        terminal(&nodes[2], device).await.disconnect().await;
        ids.extend(commands.send(device, 0..10).await);
    }
    nodes[2].stop();
    eprintln!("node-2 stopped (SIGTERM)");
    for device in devices {
        let mut terminal = terminal(&nodes[0], device).await;
        let want: Vec<String> = (0..10).map(|i| format!("{device}:{i}")).collect();
        receive_all(&mut terminal, &want, &mut HashSet::new()).await;
    }
    let receipts = delivered_receipts(&bootstrap, &format!("{prefix}.receipts"), &ids).await;
    let duplicates = check_receipts(&receipts, &ids);
    eprintln!(
        "{} commands after scale-in: 0 lost, {duplicates} duplicate receipts",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_creates_the_topics_it_needs() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let bootstrap = kafka();
    let prefix = unique("cc");
    let _node = start_nodes(&bootstrap, &prefix, 1);
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let partitions = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .map(|t| t.partitions().len())
    };
    for topic in ["downlink", "receipts", "presence", "scan", "print-status"] {
        assert_eq!(
            partitions(&format!("{prefix}.{topic}")),
            Some(12),
            "{topic}"
        );
    }
    assert_eq!(
        partitions(&format!("{prefix}.downlink.inbox.node-0")),
        Some(1)
    );
    let presence = format!("{prefix}.presence");
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic(&presence)], &AdminOptions::new())
        .await
        .unwrap();
    let policy = configs[0]
        .as_ref()
        .unwrap()
        .get("cleanup.policy")
        .and_then(|e| e.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_closes_what_its_crash_left_open() {
    use tokio::io::AsyncBufReadExt as _;
    let bootstrap = kafka();
    let prefix = unique("cr");
    let port = common::free_port();
    let mut node = start_node(&bootstrap, &prefix, 0, port);
    node.wait_ready();
    let device = "cr-speaker";
    let mut held = tokio::process::Command::new("python3")
        .arg(common::repo_root().join("herald/tests/paho_taken_over.py"))
        .args(["--port", &port.to_string()])
        .args(["--device", device, "--password", &node.password(device)])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the paho terminal");
    let mut lines = tokio::io::BufReader::new(held.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("CONNECTED")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.crash();
    held.kill().await.unwrap();
    let restarted = start_node(&bootstrap, &prefix, 0, port);
    restarted.wait_ready();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events: Vec<PresenceEvent> = consume(
        &bootstrap,
        &format!("{prefix}.presence"),
        usize::MAX,
        Duration::from_secs(5),
    )
    .await
    .iter()
    .map(|r| PresenceEvent::decode(&r.payload[..]).unwrap())
    .collect();
    let [online, offline] = &events[..] else {
        panic!("expected the crash's online record and its closing: {events:?}")
    };
    assert!(online.online && !offline.online, "{events:?}");
    assert_eq!(online.generation, offline.generation);
    assert_eq!(offline.reason(), PresenceReason::ServerShutdown);
}
