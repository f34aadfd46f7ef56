//! Print jobs cut into chunks that fit a printer's maximum MQTT packet size,
//! and the reassembly a printer does (here for simulated printers in tests):
//! a contract between the print dispatcher and printer firmware.
//!
//! Every chunk of a job carries the job id, its index in `0..total`, the
//! total, the copies and format, and the SHA-256 of the whole content, so a
//! printer can collect chunks in any order, drop duplicates by index (delivery
//! is at least once) and check the content before printing it. Text is cut on
//! byte boundaries, possibly inside a UTF-8 character: the printer only
//! decodes it after reassembly.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::v1::{print_job, PrintChunk, PrintFormat, PrintJob};
use ring::digest;
use thiserror::Error;

/// Bytes of a device's maximum packet size kept for everything around a
/// chunk's data. Worst cases, with the id limits this budget assumes:
/// - MQTT PUBLISH: fixed header 5, topic `devices/<id ≤ 64>/down/<kind>` with
///   its length ≤ 110, packet id 2, MQTT 5 properties ≤ 128 (no large user
///   properties): ≤ 245;
/// - DownlinkCommand: command id ≤ 128 bytes, device id ≤ 64, kind, two
///   timestamps, payload tag and length: ≤ 230;
/// - PrintChunk: job id ≤ [`MAX_JOB_ID_LEN`], index, total, copies, format,
///   SHA-256, data tag and length: ≤ 195.
///
/// That is about 670 bytes; 1024 leaves room for growth of those messages.
pub const PACKET_OVERHEAD_BYTES: usize = 1024;

/// Longest job id [`chunk_job`] accepts, so that [`PACKET_OVERHEAD_BYTES`] holds.
pub const MAX_JOB_ID_LEN: usize = 128;

/// How many completed job ids a [`Reassembler`] remembers, to drop late
/// duplicates of jobs it already returned.
const REMEMBERED_JOBS: usize = 64;

/// Why a job cannot be chunked, or a chunk cannot be reassembled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkError {
    #[error("max_chunk_bytes must be positive (is the device's packet size above {PACKET_OVERHEAD_BYTES} bytes?)")]
    ZeroChunkSize,
    #[error("print job has no job id")]
    EmptyJobId,
    #[error("job id is {0} bytes, more than the {MAX_JOB_ID_LEN} allowed")]
    JobIdTooLong(usize),
    #[error("print job has no content (neither text nor escpos)")]
    NoContent,
    #[error("print job content is empty")]
    EmptyContent,
    #[error("print job needs more than {} chunks", u32::MAX)]
    TooManyChunks,
    #[error("job {job_id}: chunk index {index} is outside 0..{total}")]
    IndexOutOfRange {
        job_id: String,
        index: u32,
        total: u32,
    },
    #[error("job {job_id}: chunk {index} disagrees with earlier chunks on {field}")]
    Inconsistent {
        job_id: String,
        index: u32,
        field: &'static str,
    },
    #[error("job {job_id}: reassembled content does not match its SHA-256")]
    DigestMismatch { job_id: String },
}

/// The largest chunk data for which the whole downlink PUBLISH stays within
/// `max_packet_size` (0 when the packet size cannot hold the overhead, which
/// [`chunk_job`] refuses).
pub fn max_chunk_bytes_for_packet(max_packet_size: usize) -> usize {
    max_packet_size.saturating_sub(PACKET_OVERHEAD_BYTES)
}

/// Cuts a job's content into chunks of at most `max_chunk_bytes` bytes.
/// `copies` 0 (proto3's unset) means one copy.
pub fn chunk_job(job: &PrintJob, max_chunk_bytes: usize) -> Result<Vec<PrintChunk>, ChunkError> {
    if max_chunk_bytes == 0 {
        return Err(ChunkError::ZeroChunkSize);
    }
    if job.job_id.is_empty() {
        return Err(ChunkError::EmptyJobId);
    }
    if job.job_id.len() > MAX_JOB_ID_LEN {
        return Err(ChunkError::JobIdTooLong(job.job_id.len()));
    }
    let (content, format) = match &job.content {
        Some(print_job::Content::Text(text)) => (text.as_bytes(), PrintFormat::Text),
        Some(print_job::Content::Escpos(bytes)) => (bytes.as_slice(), PrintFormat::Escpos),
        None => return Err(ChunkError::NoContent),
    };
    if content.is_empty() {
        return Err(ChunkError::EmptyContent);
    }
    let sha256 = digest::digest(&digest::SHA256, content).as_ref().to_vec();
    let pieces = content.chunks(max_chunk_bytes);
    let total = u32::try_from(pieces.len()).map_err(|_| ChunkError::TooManyChunks)?;
    let copies = job.copies.max(1);
    Ok((0..total)
        .zip(pieces)
        .map(|(index, data)| PrintChunk {
            job_id: job.job_id.clone(),
            index,
            total,
            data: data.to_vec(),
            content_sha256: sha256.clone(),
            copies,
            format: format as i32,
        })
        .collect())
}

/// Collects chunks of any number of jobs, as a printer does.
#[derive(Debug, Default)]
pub struct Reassembler {
    jobs: HashMap<String, Partial>,
    completed: VecDeque<String>,
}

#[derive(Debug)]
struct Partial {
    total: u32,
    sha256: Vec<u8>,
    copies: u32,
    format: i32,
    // A map, not a Vec of `total` slots: `total` comes from the wire.
    chunks: BTreeMap<u32, Vec<u8>>,
}

impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk. Returns the job's content when this chunk completes it
    /// and the SHA-256 matches; `None` while chunks are missing and for
    /// duplicates (also of a recently completed job). A digest mismatch
    /// forgets the job, so that a resend starts afresh.
    pub fn add(&mut self, chunk: PrintChunk) -> Result<Option<Vec<u8>>, ChunkError> {
        if chunk.index >= chunk.total {
            return Err(ChunkError::IndexOutOfRange {
                job_id: chunk.job_id,
                index: chunk.index,
                total: chunk.total,
            });
        }
        if self.completed.contains(&chunk.job_id) {
            return Ok(None);
        }
        let partial = self
            .jobs
            .entry(chunk.job_id.clone())
            .or_insert_with(|| Partial {
                total: chunk.total,
                sha256: chunk.content_sha256.clone(),
                copies: chunk.copies,
                format: chunk.format,
                chunks: BTreeMap::new(),
            });
        let disagreement = if partial.total != chunk.total {
            Some("total")
        } else if partial.sha256 != chunk.content_sha256 {
            Some("content_sha256")
        } else if partial.copies != chunk.copies {
            Some("copies")
        } else if partial.format != chunk.format {
            Some("format")
        } else {
            None
        };
        if let Some(field) = disagreement {
            return Err(ChunkError::Inconsistent {
                job_id: chunk.job_id,
                index: chunk.index,
                field,
            });
        }
        // First copy of an index wins; a corrupted duplicate cannot replace it.
        partial.chunks.entry(chunk.index).or_insert(chunk.data);
        if partial.chunks.len() < partial.total as usize {
            return Ok(None);
        }
        let Some(partial) = self.jobs.remove(&chunk.job_id) else {
            return Ok(None);
        };
        let content: Vec<u8> = partial.chunks.into_values().flatten().collect();
        if digest::digest(&digest::SHA256, &content).as_ref() != partial.sha256.as_slice() {
            return Err(ChunkError::DigestMismatch {
                job_id: chunk.job_id,
            });
        }
        if self.completed.len() == REMEMBERED_JOBS {
            self.completed.pop_front();
        }
        self.completed.push_back(chunk.job_id);
        Ok(Some(content))
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::{CommandKind, DownlinkCommand};
    use crate::Message;

    use super::*;

    /// xorshift64: deterministic pseudo-random numbers without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn job(content: print_job::Content) -> PrintJob {
        PrintJob {
            job_id: "job-1".into(),
            device_id: "prn-1".into(),
            content: Some(content),
            ..Default::default()
        }
    }

    #[test]
    fn random_job_survives_shuffle_and_duplicates() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let content: Vec<u8> = (0..200 * 1024).map(|_| rng.next() as u8).collect();
        let mut escpos = job(print_job::Content::Escpos(content.clone()));
        escpos.copies = 2;
        let chunks = chunk_job(&escpos, 16 * 1024).expect("chunked");

        assert_eq!(chunks.len(), 13);
        assert_eq!(chunks[12].data.len(), 200 * 1024 - 12 * 16 * 1024);
        let sha = digest::digest(&digest::SHA256, &content);
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.index as usize, i);
            assert_eq!(chunk.total, 13);
            assert_eq!(chunk.job_id, "job-1");
            assert_eq!(chunk.copies, 2);
            assert_eq!(chunk.format(), PrintFormat::Escpos);
            assert_eq!(chunk.content_sha256, sha.as_ref());
        }

        // Every chunk once, plus duplicates, in a random order.
        let mut delivery = chunks.clone();
        for _ in 0..10 {
            delivery.push(chunks[rng.below(chunks.len())].clone());
        }
        for i in (1..delivery.len()).rev() {
            delivery.swap(i, rng.below(i + 1));
        }
        let mut printer = Reassembler::new();
        let mut printed = Vec::new();
        for chunk in delivery {
            if let Some(content) = printer.add(chunk).expect("consistent chunks") {
                printed.push(content);
            }
        }
        assert_eq!(printed.len(), 1, "returned exactly once");
        assert!(printed[0] == content, "byte for byte");
        assert_eq!(printer.add(chunks[3].clone()), Ok(None), "late duplicate");
    }

    #[test]
    fn text_job_defaults() {
        let chunks =
            chunk_job(&job(print_job::Content::Text("小票 receipt".into())), 4).expect("chunked");
        assert_eq!(chunks.len(), 4, "15 UTF-8 bytes");
        assert!(chunks.iter().all(|c| c.format() == PrintFormat::Text));
        assert!(chunks.iter().all(|c| c.copies == 1), "copies 0 means 1");
        let mut printer = Reassembler::new();
        let mut out = None;
        for chunk in chunks.into_iter().rev() {
            out = printer.add(chunk).expect("added");
        }
        assert_eq!(out.as_deref(), Some("小票 receipt".as_bytes()));

        let one = chunk_job(&job(print_job::Content::Text("x".into())), 1024).expect("chunked");
        assert_eq!((one.len(), one[0].total), (1, 1));
    }

    #[test]
    fn chunking_refusals() {
        let text = job(print_job::Content::Text("hello".into()));
        assert_eq!(chunk_job(&text, 0), Err(ChunkError::ZeroChunkSize));
        let empty = job(print_job::Content::Escpos(Vec::new()));
        assert_eq!(chunk_job(&empty, 10), Err(ChunkError::EmptyContent));
        let empty = job(print_job::Content::Text(String::new()));
        assert_eq!(chunk_job(&empty, 10), Err(ChunkError::EmptyContent));
        let mut missing = text.clone();
        missing.content = None;
        assert_eq!(chunk_job(&missing, 10), Err(ChunkError::NoContent));
        let mut anonymous = text.clone();
        anonymous.job_id.clear();
        assert_eq!(chunk_job(&anonymous, 10), Err(ChunkError::EmptyJobId));
        let mut long = text;
        long.job_id = "j".repeat(MAX_JOB_ID_LEN + 1);
        assert_eq!(chunk_job(&long, 10), Err(ChunkError::JobIdTooLong(129)));
    }

    #[test]
    fn reassembly_refusals() {
        let chunks =
            chunk_job(&job(print_job::Content::Text("abcdef".into())), 2).expect("chunked");

        let mut printer = Reassembler::new();
        let mut wrong_total = chunks[1].clone();
        wrong_total.total = 4;
        printer.add(chunks[0].clone()).expect("first");
        assert!(matches!(
            printer.add(wrong_total),
            Err(ChunkError::Inconsistent { field: "total", .. })
        ));
        let mut wrong_copies = chunks[1].clone();
        wrong_copies.copies = 3;
        assert!(matches!(
            printer.add(wrong_copies),
            Err(ChunkError::Inconsistent {
                field: "copies",
                ..
            })
        ));
        let mut outside = chunks[1].clone();
        outside.index = 3;
        assert!(matches!(
            printer.add(outside),
            Err(ChunkError::IndexOutOfRange {
                index: 3,
                total: 3,
                ..
            })
        ));

        // Corrupted data: refused, then a clean resend prints.
        let mut corrupted = chunks[2].clone();
        corrupted.data = b"zz".to_vec();
        printer.add(chunks[1].clone()).expect("second");
        assert_eq!(
            printer.add(corrupted),
            Err(ChunkError::DigestMismatch {
                job_id: "job-1".into()
            })
        );
        let mut out = None;
        for chunk in chunks {
            out = printer.add(chunk).expect("resend");
        }
        assert_eq!(out.as_deref(), Some(&b"abcdef"[..]));
    }

    #[test]
    fn chunk_command_fits_the_packet() {
        assert_eq!(max_chunk_bytes_for_packet(100), 0);
        assert_eq!(max_chunk_bytes_for_packet(1024 * 1024), 1024 * 1024 - 1024);

        // The largest chunk with the longest ids, wrapped as Herald would send it.
        let max_packet = 4096;
        let data_len = max_chunk_bytes_for_packet(max_packet);
        let mut print = job(print_job::Content::Escpos(vec![0xAB; data_len * 3]));
        print.job_id = "j".repeat(MAX_JOB_ID_LEN);
        print.copies = u32::MAX;
        let chunk = chunk_job(&print, data_len).expect("chunked").remove(0);
        let command = DownlinkCommand {
            command_id: "c".repeat(128),
            device_id: "d".repeat(64),
            kind: CommandKind::PrintChunk as i32,
            payload: chunk.encode_to_vec(),
            created_at_ms: i64::MAX,
            expires_at_ms: i64::MAX,
        };
        let topic = format!("devices/{}/down/print-chunk", "d".repeat(64));
        // Fixed header (5) + topic length (2) + topic + packet id (2) + properties (128).
        let packet = 5 + 2 + topic.len() + 2 + 128 + command.encoded_len();
        assert!(packet <= max_packet, "{packet} > {max_packet}");
        assert!(
            packet + 256 <= max_packet,
            "headroom left: {}",
            max_packet - packet
        );
    }
}
