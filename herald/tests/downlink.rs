//! The round trip through the real `herald` binary, a real Kafka and the
//! consumer services: payments announced on speakers (one a paho-mqtt
//! client), offline delivery and expiry with receipts, print jobs in chunks,
//! scan validation, dead letters, presence, and a SIGKILL in the middle of a
//! stream of commands.

mod common;

use common::{consume, kafka, produce, run_service, services_config, unique, Herald};
use herald_consumers::Service;
use herald_loadtest::terminal::{Terminal, TerminalOptions};
use herald_schemas::v1::*;
use herald_schemas::Message as _;
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn terminal(herald: &Herald, device_id: &str) -> Terminal {
    let options = TerminalOptions::new(
        "127.0.0.1",
        herald.mqtt.port(),
        device_id,
        Some(herald.password(device_id)),
    );
    Terminal::connect(options).await.expect("terminal connects")
}

fn payment(payment_id: &str, device_id: &str, amount_minor: i64, expires_at_ms: i64) -> Vec<u8> {
    PaymentEvent {
        payment_id: payment_id.into(),
        merchant_id: "m-1".into(),
        device_id: device_id.into(),
        amount_minor,
        currency: "CNY".into(),
        channel: PaymentChannel::Alipay as i32,
        locale: "zh-CN".into(),
        created_at_ms: now_ms(),
        expires_at_ms,
    }
    .encode_to_vec()
}

async fn receipts(bootstrap: &str, topic: &str, want: usize) -> Vec<DeliveryReceipt> {
    consume(bootstrap, topic, want, Duration::from_secs(60))
        .await
        .iter()
        .map(|r| DeliveryReceipt::decode(&r.payload[..]).expect("a receipt"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn payment_is_announced_on_a_paho_speaker_then_receipted() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let _announcer = run_service(Service::Announcer, &services_config(&herald, &bootstrap));
    let device = "paho-speaker-1";
    let mut speaker = tokio::process::Command::new("python3")
        .arg(common::repo_root().join("herald/tests/paho_speaker.py"))
        .args([
            "--port",
            &herald.mqtt.port().to_string(),
            "--device",
            device,
            "--password",
            &herald.password(device),
        ])
        .args(["--count", "1", "--timeout", "60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the paho speaker");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        speaker.stdout.take().unwrap(),
    ));
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("SUBSCRIBED")
    );

    produce(
        &bootstrap,
        &herald.topic("payments"),
        device,
        &payment("pay-0001", device, 1250, 0),
    )
    .await;
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("announced")
        .unwrap()
        .unwrap();
    let command = DownlinkCommand::decode(&hex(&line)[..]).unwrap();
    assert_eq!(command.command_id, "pay-0001");
    let announcement = Announcement::decode(&command.payload[..]).unwrap();
    assert_eq!(announcement.text, "支付宝收款十二元五角");
    assert!(speaker.wait().await.unwrap().success());

    let receipts = receipts(&bootstrap, &herald.topic("receipts"), 1).await;
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        (receipts[0].command_id.as_str(), receipts[0].outcome()),
        ("pay-0001", DeliveryOutcome::Delivered)
    );
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_speaker_gets_its_announcement_on_reconnect_but_not_after_the_ttl() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let _announcer = run_service(Service::Announcer, &services_config(&herald, &bootstrap));
    let device = "speaker-offline-1";
    terminal(&herald, device).await.disconnect().await; // leaves a persistent session

    produce(
        &bootstrap,
        &herald.topic("payments"),
        device,
        &payment("pay-in-time", device, 800, now_ms() + 60_000),
    )
    .await;
    produce(
        &bootstrap,
        &herald.topic("payments"),
        device,
        &payment("pay-too-late", device, 900, now_ms() + 2_000),
    )
    .await;
    // The late one expires while the speaker is away...
    let expired = receipts(&bootstrap, &herald.topic("receipts"), 1).await;
    assert_eq!(
        (expired[0].command_id.as_str(), expired[0].outcome()),
        ("pay-too-late", DeliveryOutcome::Expired)
    );

    // ...and the other one is waiting for it.
    let mut speaker = terminal(&herald, device).await;
    let (command, announcement) = speaker
        .next_announcement(Duration::from_secs(30))
        .await
        .expect("announced on reconnect");
    assert_eq!(
        (command.command_id.as_str(), announcement.text.as_str()),
        ("pay-in-time", "支付宝收款八元")
    );
    assert!(
        speaker.next_command(Duration::from_secs(2)).await.is_none(),
        "the expired one is never delivered"
    );
    let all = receipts(&bootstrap, &herald.topic("receipts"), 2).await;
    let delivered = all
        .iter()
        .find(|r| r.command_id == "pay-in-time")
        .expect("a receipt");
    assert_eq!(delivered.outcome(), DeliveryOutcome::Delivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn print_job_of_200_kb_reassembles_and_its_status_follows_the_printer() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let _dispatcher = run_service(
        Service::PrintDispatcher,
        &services_config(&herald, &bootstrap),
    );
    let device = "printer-0001";
    let mut printer = terminal(&herald, device).await;
    let content: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let job = PrintJob {
        job_id: "job-200k".into(),
        device_id: device.into(),
        content: Some(print_job::Content::Escpos(content.clone())),
        copies: 1,
        created_at_ms: now_ms(),
        expires_at_ms: 0,
    };
    produce(
        &bootstrap,
        &herald.topic("print.jobs"),
        device,
        &job.encode_to_vec(),
    )
    .await;
    let (job_id, printed) = printer
        .receive_print_job(Duration::from_secs(60))
        .await
        .expect("the whole job");
    assert_eq!(job_id, "job-200k");
    assert!(printed == content, "reassembled byte for byte");

    printer
        .publish_print_status("job-200k", PrintState::Printed, "")
        .await
        .unwrap();
    let states: Vec<JobState> = consume(
        &bootstrap,
        &herald.topic("print.status"),
        3,
        Duration::from_secs(60),
    )
    .await
    .iter()
    .map(|r| JobStatus::decode(&r.payload[..]).unwrap().state())
    .collect();
    assert_eq!(
        states,
        [JobState::Queued, JobState::Sent, JobState::Printed]
    );

    printer
        .publish_print_status("job-200k", PrintState::Failed, "out_of_paper")
        .await
        .unwrap();
    let last = consume(
        &bootstrap,
        &herald.topic("print.status"),
        4,
        Duration::from_secs(60),
    )
    .await;
    let failed = JobStatus::decode(&last[3].payload[..]).unwrap();
    assert_eq!(
        (failed.state(), failed.reason.as_str()),
        (JobState::Failed, "out_of_paper")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scans_are_validated_or_dead_lettered_with_a_display_command() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let _scans = run_service(
        Service::ScanProcessor,
        &services_config(&herald, &bootstrap),
    );
    let device = "scanbox-0007";
    let mut scanbox = terminal(&herald, device).await;
    scanbox
        .publish_scan("134567890123456789", "s-1")
        .await
        .unwrap();
    scanbox.publish_scan("99999", "s-2").await.unwrap();

    let validated = consume(
        &bootstrap,
        &herald.topic("payment.scans"),
        1,
        Duration::from_secs(60),
    )
    .await;
    let scan = ValidatedScan::decode(&validated[0].payload[..]).unwrap();
    assert_eq!(
        (scan.code.as_str(), scan.scheme(), scan.device_id.as_str()),
        ("134567890123456789", PaymentScheme::WechatPay, device)
    );

    let letters = consume(
        &bootstrap,
        &herald.topic("deadletter"),
        1,
        Duration::from_secs(60),
    )
    .await;
    let letter = DeadLetter::decode(&letters[0].payload[..]).unwrap();
    assert_eq!(letter.service, "scan-processor");
    assert!(
        letter.error.starts_with("unknown_prefix") || letter.error.starts_with("wrong_length"),
        "{}",
        letter.error
    );
    let display = scanbox
        .next_display(Duration::from_secs(30))
        .await
        .expect("the scan box is told");
    assert_eq!(display.text, "Payment code not accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_go_to_the_dead_letter_topic_and_services_keep_going() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let config = services_config(&herald, &bootstrap);
    let _a = run_service(Service::Announcer, &config);
    let _p = run_service(Service::PrintDispatcher, &config);
    let _s = run_service(Service::ScanProcessor, &config);
    let poison = [0xffu8, 0xff, 0xff, 0x07];
    for topic in ["payments", "print.jobs", "scan"] {
        produce(&bootstrap, &herald.topic(topic), "poisoned", &poison).await;
    }
    // Each keeps going: a good record after the poison one is processed.
    let device = "speaker-after-poison";
    let mut speaker = terminal(&herald, device).await;
    produce(
        &bootstrap,
        &herald.topic("payments"),
        device,
        &payment("pay-after-poison", device, 100, 0),
    )
    .await;
    assert!(speaker
        .next_announcement(Duration::from_secs(60))
        .await
        .is_some());

    let letters = consume(
        &bootstrap,
        &herald.topic("deadletter"),
        3,
        Duration::from_secs(60),
    )
    .await;
    let mut services: Vec<String> = letters
        .iter()
        .map(|r| DeadLetter::decode(&r.payload[..]).unwrap().service)
        .collect();
    services.sort();
    assert_eq!(
        services,
        ["announcer", "print-dispatcher", "scan-processor"]
    );
    assert!(letters
        .iter()
        .all(|r| DeadLetter::decode(&r.payload[..]).unwrap().payload == poison));
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_follows_connects_and_disconnects() {
    let bootstrap = kafka();
    let herald = Herald::start(&bootstrap, "");
    herald.wait_ready();
    let device = "speaker-presence";
    terminal(&herald, device).await.disconnect().await;
    let events: Vec<PresenceEvent> = consume(
        &bootstrap,
        &herald.topic("presence"),
        2,
        Duration::from_secs(60),
    )
    .await
    .iter()
    .map(|r| PresenceEvent::decode(&r.payload[..]).unwrap())
    .collect();
    assert_eq!(events.len(), 2);
    assert!(
        events[0].online
            && events[0].reason() == PresenceReason::Connected
            && events[0].device_id == device
    );
    assert!(!events[1].online && events[1].reason() == PresenceReason::Normal);
    assert_eq!(events[0].generation, events[1].generation);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_the_middle_of_a_command_stream_loses_nothing() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let bootstrap = kafka();
    let prefix = unique("t");
    let port = common::free_port();
    let mut herald = Herald::start_with(&bootstrap, "", &prefix, port);
    herald.wait_ready();
    let device = "speaker-crash";
    let mut speaker = terminal(&herald, device).await;

    const COMMANDS: usize = 300;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..COMMANDS {
        let announcement = Announcement {
            text: format!("command {i}"),
            ..Default::default()
        };
        let command = DownlinkCommand {
            command_id: format!("cmd-{i:04}"),
            device_id: device.into(),
            kind: CommandKind::Announce as i32,
            payload: announcement.encode_to_vec(),
            created_at_ms: now_ms(),
            expires_at_ms: now_ms() + 600_000,
        };
        let payload = command.encode_to_vec();
        let topic = herald.topic("downlink");
        let record = FutureRecord::to(&topic).key(device).payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }

    let mut received = HashSet::new();
    while received.len() < COMMANDS / 3 {
        let command = speaker
            .next_command(Duration::from_secs(60))
            .await
            .expect("commands flow");
        received.insert(command.command_id);
    }
    herald.crash();
    eprintln!(
        "killed Herald after {} of {COMMANDS} commands",
        received.len()
    );
    let _restarted = Herald::start_with(&bootstrap, "", &prefix, port);
    while received.len() < COMMANDS {
        let command = speaker
            .next_command(Duration::from_secs(90))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "only {} of {COMMANDS} commands arrived after the restart",
                    received.len()
                )
            });
        received.insert(command.command_id);
    }
    eprintln!(
        "every command arrived; {} duplicates dropped by the speaker",
        speaker.duplicates
    );

    // Receipts: every command has a "delivered" one (some may have two).
    let ids: HashSet<String> = (0..COMMANDS).map(|i| format!("cmd-{i:04}")).collect();
    common::delivered_receipts(&bootstrap, &format!("{prefix}.receipts"), &ids).await;
}
