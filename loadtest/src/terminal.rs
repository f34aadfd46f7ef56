//! A simulated terminal: a cloud speaker, a cloud printer or a QR scan box,
//! speaking Herald's device protocol (docs/device-protocol.md) over MQTT
//! 3.1.1 with the rumqttc client.
//!
//! It connects with its device credentials and a persistent session,
//! subscribes to its downlink namespace after every CONNACK (a restarted
//! Herald has no memory of the session), acknowledges commands with QoS 1,
//! and drops duplicates by command id, as firmware must.

use bytes::Bytes;
use herald_schemas::chunking::Reassembler;
use herald_schemas::v1::{
    Announcement, CommandKind, Display, DownlinkCommand, PrintChunk, PrintState, PrintStatus,
    ScanResult,
};
use herald_schemas::Message as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How a terminal reaches Herald.
#[derive(Debug, Clone)]
pub struct TerminalOptions {
    pub host: String,
    pub port: u16,
    pub device_id: String,
    /// MQTT password (see `herald credentials`); none in open mode.
    pub password: Option<String>,
    /// Persistent session (clean session = 0), as terminals should use.
    pub persistent: bool,
    pub keepalive: Duration,
}

impl TerminalOptions {
    pub fn new(host: &str, port: u16, device_id: &str, password: Option<String>) -> Self {
        Self {
            host: host.into(),
            port,
            device_id: device_id.into(),
            password,
            persistent: true,
            keepalive: Duration::from_secs(30),
        }
    }
}

/// What the terminal's connection reports.
#[derive(Debug)]
enum Incoming {
    Subscribed,
    Command(DownlinkCommand),
}

/// One connected terminal.
pub struct Terminal {
    pub device_id: String,
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Commands that arrived before the SUBACK (a resumed session's queue).
    backlog: VecDeque<DownlinkCommand>,
    seen: HashSet<String>,
    /// Commands received again after they were already handled.
    pub duplicates: usize,
    task: JoinHandle<()>,
}

impl Terminal {
    /// Connects and waits until the downlink subscription is in place.
    pub async fn connect(options: TerminalOptions) -> anyhow::Result<Terminal> {
        let mut mqtt = MqttOptions::new(&options.device_id, &options.host, options.port);
        mqtt.set_keep_alive(options.keepalive)
            .set_clean_session(!options.persistent)
            .set_max_packet_size(2 << 20, 2 << 20);
        if let Some(password) = &options.password {
            mqtt.set_credentials(&options.device_id, password);
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, 64);
        let (tx, incoming) = mpsc::unbounded_channel();
        let filter = format!("devices/{}/down/#", options.device_id);
        let subscriber = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = subscriber.subscribe(&filter, QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(Incoming::Subscribed);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if let Ok(command) = DownlinkCommand::decode(publish.payload) {
                            let _ = tx.send(Incoming::Command(command));
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        tracing::warn!(?code, "terminal refused");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(_) if tx.is_closed() => return,
                    // Reconnects on the next poll, as a device would.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let mut terminal = Terminal {
            device_id: options.device_id,
            client,
            incoming,
            backlog: VecDeque::new(),
            seen: HashSet::new(),
            duplicates: 0,
            task,
        };
        let subscribed = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = terminal.incoming.recv().await {
                match event {
                    Incoming::Subscribed => return true,
                    Incoming::Command(command) => terminal.backlog.push_back(command),
                }
            }
            false
        })
        .await;
        anyhow::ensure!(
            subscribed == Ok(true),
            "{}: no SUBACK within 30s",
            terminal.device_id
        );
        Ok(terminal)
    }

    /// The next command not seen before, or `None` after `wait`.
    pub async fn next_command(&mut self, wait: Duration) -> Option<DownlinkCommand> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match self.backlog.pop_front() {
                Some(command) => Ok(Some(Incoming::Command(command))),
                None => tokio::time::timeout_at(deadline, self.incoming.recv()).await,
            };
            match next {
                Ok(Some(Incoming::Command(command))) => {
                    if self.seen.insert(command.command_id.clone()) {
                        return Some(command);
                    }
                    self.duplicates += 1;
                }
                Ok(Some(Incoming::Subscribed)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Speaker: the next announcement.
    pub async fn next_announcement(
        &mut self,
        wait: Duration,
    ) -> Option<(DownlinkCommand, Announcement)> {
        let command = self.next_command(wait).await?;
        let announcement = (command.kind() == CommandKind::Announce)
            .then(|| Announcement::decode(&command.payload[..]).ok())
            .flatten()?;
        Some((command, announcement))
    }

    /// Scan box / speaker with a screen: the next display message.
    pub async fn next_display(&mut self, wait: Duration) -> Option<Display> {
        let command = self.next_command(wait).await?;
        (command.kind() == CommandKind::Display)
            .then(|| Display::decode(&command.payload[..]).ok())
            .flatten()
    }

    /// Printer: collects chunks until a whole job is in; returns (job id, content).
    pub async fn receive_print_job(&mut self, wait: Duration) -> anyhow::Result<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut reassembler = Reassembler::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let command = self
                .next_command(left)
                .await
                .ok_or_else(|| anyhow::anyhow!("print job incomplete after {wait:?}"))?;
            if command.kind() != CommandKind::PrintChunk {
                continue;
            }
            let chunk = PrintChunk::decode(&command.payload[..])?;
            let job_id = chunk.job_id.clone();
            if let Some(content) = reassembler.add(chunk)? {
                return Ok((job_id, content));
            }
        }
    }

    /// Scan box: publishes a scanned code (QoS 1).
    pub async fn publish_scan(&self, code: &str, scan_id: &str) -> anyhow::Result<()> {
        let scan = ScanResult {
            code: code.into(),
            scanned_at_ms: now_ms(),
            scan_id: scan_id.into(),
        };
        self.publish("scan", scan.encode_to_vec()).await
    }

    /// Printer: reports on a job (QoS 1).
    pub async fn publish_print_status(
        &self,
        job_id: &str,
        state: PrintState,
        reason: &str,
    ) -> anyhow::Result<()> {
        let status = PrintStatus {
            job_id: job_id.into(),
            state: state as i32,
            reason: reason.into(),
            at_ms: now_ms(),
        };
        self.publish("print-status", status.encode_to_vec()).await
    }

    async fn publish(&self, kind: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        let topic = format!("devices/{}/up/{kind}", self.device_id);
        self.client
            .publish_bytes(topic, QoS::AtLeastOnce, false, Bytes::from(payload))
            .await?;
        Ok(())
    }

    /// Disconnects cleanly (the persistent session stays on the broker).
    /// Disconnects; returns the commands that arrived (and were
    /// acknowledged) but were not read yet.
    pub async fn disconnect(mut self) -> Vec<DownlinkCommand> {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        let mut unread = Vec::new();
        while let Some(command) = self.next_command(Duration::ZERO).await {
            unread.push(command);
        }
        unread
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
