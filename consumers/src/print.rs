//! Print dispatcher: print jobs → chunked print commands for the printer;
//! the printer's status uplinks and Herald's delivery receipts → job status
//! events (queued, sent, printed, failed with a reason).
//!
//! Stateless: a chunk's command id is `<job_id>:<index>/<total>`, so the
//! receipt of the last chunk alone says the whole job was sent (chunks reach a
//! printer in order, through one Kafka partition and one MQTT session).
//! A printer status uplink retransmitted by the printer (same
//! `herald-message-id`) is dropped within the instance's dedup window.

use crate::config::{KafkaSettings, PrintDispatcherConfig};
use crate::pipeline::{now_ms, Input, Output, Processor, Verdict};
use herald_schemas::chunking;
use herald_schemas::headers::MESSAGE_ID as MESSAGE_ID_HEADER;
use herald_schemas::v1::{
    CommandKind, DeliveryOutcome, DeliveryReceipt, DownlinkCommand, JobState, JobStatus, PrintJob,
    PrintState, PrintStatus,
};
use herald_schemas::Message as _;

pub struct PrintDispatcher {
    config: PrintDispatcherConfig,
    downlink_topic: String,
    receipts_topic: String,
}

/// The command id of chunk `index` of `total` of `job_id`.
pub fn chunk_command_id(job_id: &str, index: u32, total: u32) -> String {
    format!("{job_id}:{index}/{total}")
}

fn parse_chunk_command_id(command_id: &str) -> Option<(&str, u32, u32)> {
    let (job_id, position) = command_id.rsplit_once(':')?;
    let (index, total) = position.split_once('/')?;
    let (index, total): (u32, u32) = (index.parse().ok()?, total.parse().ok()?);
    // A chunk index is below the chunk count (so `index + 1` cannot overflow).
    (index < total).then_some((job_id, index, total))
}

impl PrintDispatcher {
    pub fn new(config: &PrintDispatcherConfig, kafka: &KafkaSettings) -> Self {
        Self {
            config: config.clone(),
            downlink_topic: kafka.downlink_topic.clone(),
            receipts_topic: kafka.receipts_topic.clone(),
        }
    }

    /// The topics this service consumes.
    pub fn inputs(&self) -> [&str; 3] {
        [
            &self.config.jobs_topic,
            &self.config.status_uplink_topic,
            &self.receipts_topic,
        ]
    }

    fn status(
        &self,
        job_id: &str,
        device_id: &str,
        state: JobState,
        reason: &str,
        at_ms: i64,
    ) -> Output {
        let status = JobStatus {
            job_id: job_id.into(),
            device_id: device_id.into(),
            state: state as i32,
            reason: reason.into(),
            at_ms,
        };
        Output {
            topic: self.config.job_status_topic.clone(),
            key: device_id.into(),
            payload: status.encode_to_vec(),
        }
    }

    /// A job → its chunk commands, then a QUEUED status.
    pub fn dispatch(&self, job: &PrintJob, now: i64) -> Result<Vec<Output>, String> {
        if job.device_id.is_empty() || job.device_id.contains(['/', '+', '#']) {
            return Err(format!("invalid printer device id {:?}", job.device_id));
        }
        let max_chunk = chunking::max_chunk_bytes_for_packet(self.config.device_max_packet_size);
        let chunks = chunking::chunk_job(job, max_chunk)
            .map_err(|e| format!("cannot chunk the job: {e}"))?;
        let created = if job.created_at_ms > 0 {
            job.created_at_ms
        } else {
            now
        };
        let expires = match job.expires_at_ms {
            0 => created.saturating_add(self.config.default_ttl.as_millis() as i64),
            at => at,
        };
        let mut outputs: Vec<Output> = chunks
            .into_iter()
            .map(|chunk| {
                let command = DownlinkCommand {
                    command_id: chunk_command_id(&job.job_id, chunk.index, chunk.total),
                    device_id: job.device_id.clone(),
                    kind: CommandKind::PrintChunk as i32,
                    payload: chunk.encode_to_vec(),
                    created_at_ms: created,
                    expires_at_ms: expires,
                };
                Output {
                    topic: self.downlink_topic.clone(),
                    key: job.device_id.clone(),
                    payload: command.encode_to_vec(),
                }
            })
            .collect();
        outputs.push(self.status(&job.job_id, &job.device_id, JobState::Queued, "", now));
        Ok(outputs)
    }

    /// A printer's status uplink → the job's status.
    fn printer_status(
        &self,
        device_id: &str,
        payload: &[u8],
        now: i64,
    ) -> Result<Vec<Output>, String> {
        let status: PrintStatus = herald_schemas::decode_device_payload(payload)
            .map_err(|e| format!("not a PrintStatus: {e}"))?;
        if status.job_id.is_empty() {
            return Err("PrintStatus without job_id".into());
        }
        let state = match status.state() {
            PrintState::Queued => JobState::Queued,
            PrintState::Sent => JobState::Sent,
            PrintState::Printed => JobState::Printed,
            PrintState::Failed => JobState::Failed,
            PrintState::Unspecified => return Err("PrintStatus without state".into()),
        };
        let at = if status.at_ms > 0 { status.at_ms } else { now };
        Ok(vec![self.status(
            &status.job_id,
            device_id,
            state,
            &status.reason,
            at,
        )])
    }

    /// A delivery receipt of a chunk → SENT when the last chunk is delivered,
    /// FAILED when any chunk expired or was refused. Other receipts: nothing.
    fn chunk_receipt(&self, payload: &[u8]) -> Result<Vec<Output>, String> {
        let receipt =
            DeliveryReceipt::decode(payload).map_err(|e| format!("not a DeliveryReceipt: {e}"))?;
        let Some((job_id, index, total)) = parse_chunk_command_id(&receipt.command_id) else {
            return Ok(Vec::new()); // not a print chunk
        };
        Ok(match receipt.outcome() {
            DeliveryOutcome::Delivered if index + 1 == total => {
                vec![self.status(
                    job_id,
                    &receipt.device_id,
                    JobState::Sent,
                    "",
                    receipt.at_ms,
                )]
            }
            DeliveryOutcome::Expired | DeliveryOutcome::Refused => {
                let reason = format!("chunk {index} of {total} not delivered: {}", receipt.reason);
                vec![self.status(
                    job_id,
                    &receipt.device_id,
                    JobState::Failed,
                    &reason,
                    receipt.at_ms,
                )]
            }
            _ => Vec::new(),
        })
    }
}

impl Processor for PrintDispatcher {
    fn name(&self) -> &'static str {
        "print-dispatcher"
    }

    fn process(&self, input: &Input<'_>) -> Verdict {
        let now = now_ms();
        let result = if input.topic == self.config.jobs_topic {
            PrintJob::decode(input.payload)
                .map_err(|e| format!("not a PrintJob: {e}"))
                .and_then(|job| self.dispatch(&job, now))
        } else if input.topic == self.config.status_uplink_topic {
            self.printer_status(&input.key_str(), input.payload, now)
        } else {
            self.chunk_receipt(input.payload)
        };
        match result {
            Ok(outputs) => Verdict::Emit(outputs),
            Err(error) => Verdict::Reject {
                reason: "invalid",
                error,
                also: Vec::new(),
            },
        }
    }

    /// Printer status uplinks only, by their `herald-message-id`: a
    /// retransmitted `PrintStatus` is byte-identical (same `at_ms`), while
    /// the same job may honestly reach the same state twice (a job resent
    /// after `FAILED` fails again), so `job_id` + `state` would drop a real
    /// report. Jobs and receipts are not deduplicated here: a backend may
    /// resend a job under the same id after a failure, the printer drops
    /// duplicate chunks by command id, and a repeated receipt only repeats a
    /// status.
    fn dedup_key(&self, input: &Input<'_>) -> Option<String> {
        if input.topic != self.config.status_uplink_topic {
            return None;
        }
        input.header(MESSAGE_ID_HEADER).map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn chunk_ids_need_an_index_below_the_count() {
        assert_eq!(parse_chunk_command_id("job:1/3"), Some(("job", 1, 3)));
        assert_eq!(parse_chunk_command_id("job:4294967295/0"), None);
        assert_eq!(parse_chunk_command_id("job:3/3"), None);
    }

    use super::*;
    use herald_schemas::v1::print_job::Content;

    fn dispatcher() -> PrintDispatcher {
        PrintDispatcher::new(&PrintDispatcherConfig::default(), &KafkaSettings::default())
    }

    #[test]
    fn job_becomes_ordered_chunk_commands_and_queued_status() {
        let job = PrintJob {
            job_id: "job-7".into(),
            device_id: "prn-1".into(),
            content: Some(Content::Escpos(vec![7u8; 100_000])),
            copies: 2,
            ..Default::default()
        };
        let outputs = dispatcher().dispatch(&job, 1_000).unwrap();
        let (commands, status) = outputs.split_at(outputs.len() - 1);
        assert_eq!(commands.len(), 4, "100 kB in chunks of 31 kB");
        for (i, output) in commands.iter().enumerate() {
            let command = DownlinkCommand::decode(&output.payload[..]).unwrap();
            assert_eq!(command.command_id, format!("job-7:{i}/4"));
            assert!(
                output.payload.len() <= 32 * 1024 - 200,
                "fits the printer's packet size"
            );
        }
        let status = JobStatus::decode(&status[0].payload[..]).unwrap();
        assert_eq!(status.state(), JobState::Queued);
    }

    #[test]
    fn only_printer_status_uplinks_are_identified_by_their_message_id() {
        use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
        let record = |topic: &str| {
            let headers = OwnedHeaders::new().insert(Header {
                key: MESSAGE_ID_HEADER,
                value: Some("prn-1:0123abcd"),
            });
            OwnedMessage::new(
                Some(b"{}".to_vec()),
                Some(b"prn-1".to_vec()),
                topic.into(),
                Timestamp::NotAvailable,
                0,
                1,
                Some(headers),
            )
        };
        let d = dispatcher();
        let status = record("herald.uplink.print-status");
        assert_eq!(
            d.dedup_key(&Input::new(&status)).as_deref(),
            Some("prn-1:0123abcd")
        );
        for topic in ["herald.print.jobs", "herald.receipts"] {
            assert_eq!(d.dedup_key(&Input::new(&record(topic))), None, "{topic}");
        }
    }

    #[test]
    fn receipts_and_printer_status_become_job_status() {
        let d = dispatcher();
        let receipt = |id: &str, outcome: DeliveryOutcome| {
            DeliveryReceipt {
                command_id: id.into(),
                device_id: "prn-1".into(),
                outcome: outcome as i32,
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(d
            .chunk_receipt(&receipt("job-7:0/4", DeliveryOutcome::Delivered))
            .unwrap()
            .is_empty());
        let sent = d
            .chunk_receipt(&receipt("job-7:3/4", DeliveryOutcome::Delivered))
            .unwrap();
        assert_eq!(
            JobStatus::decode(&sent[0].payload[..]).unwrap().state(),
            JobState::Sent
        );
        let failed = d
            .chunk_receipt(&receipt("job-7:1/4", DeliveryOutcome::Expired))
            .unwrap();
        assert_eq!(
            JobStatus::decode(&failed[0].payload[..]).unwrap().state(),
            JobState::Failed
        );
        assert!(d
            .chunk_receipt(&receipt("pay-123", DeliveryOutcome::Delivered))
            .unwrap()
            .is_empty());

        let out = d
            .printer_status(
                "prn-1",
                br#"{"jobId":"job-7","state":"PRINT_STATE_FAILED","reason":"out_of_paper"}"#,
                5,
            )
            .unwrap();
        let status = JobStatus::decode(&out[0].payload[..]).unwrap();
        assert_eq!(
            (status.state(), status.reason.as_str()),
            (JobState::Failed, "out_of_paper")
        );
        assert!(d.printer_status("prn-1", b"garbage", 5).is_err());
    }
}
