//! Herald's stateless Kafka services. Each is a consumer group that keeps no
//! durable state: it turns input records into output records, commits its
//! offset only once Kafka acknowledged the outputs, and sends what it cannot
//! process to the dead-letter topic. The one thing an instance remembers, in
//! memory, is a bounded window of input ids it drops duplicates by.
//!
//! - [`announcer`]: payment events → announcements on speakers;
//! - [`print`]: print jobs → chunked print commands; printer status → job status;
//! - [`scan`]: scan uplinks → validated scans, or a dead letter and a display command.
//!
//! Each instance drops duplicate input records within a window ([`dedup`]).

pub mod amount;
pub mod announcer;
pub mod config;
pub mod dedup;
pub mod pipeline;
pub mod print;
pub mod scan;
pub mod scancode;
pub mod templates;

use config::ConsumersConfig;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The services this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Announcer,
    PrintDispatcher,
    ScanProcessor,
}

/// Runs one service until `shutdown`.
pub async fn run(
    service: Service,
    config: &ConsumersConfig,
    registry: &prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<(), pipeline::PipelineError> {
    let (kafka, dedup) = (&config.kafka, &config.dedup);
    match service {
        Service::Announcer => {
            let c = &config.announcer;
            let processor = Arc::new(announcer::Announcer::new(c, kafka));
            pipeline::run(
                processor,
                kafka,
                dedup,
                &c.group_id,
                &[&c.input_topic],
                registry,
                shutdown,
            )
            .await
        }
        Service::PrintDispatcher => {
            let c = &config.print_dispatcher;
            let processor = Arc::new(print::PrintDispatcher::new(c, kafka));
            let inputs = processor.inputs().map(str::to_owned);
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            pipeline::run(
                processor,
                kafka,
                dedup,
                &c.group_id,
                &inputs,
                registry,
                shutdown,
            )
            .await
        }
        Service::ScanProcessor => {
            let c = &config.scan_processor;
            let processor = Arc::new(scan::ScanProcessor::new(c, kafka));
            pipeline::run(
                processor,
                kafka,
                dedup,
                &c.group_id,
                &[&c.input_topic],
                registry,
                shutdown,
            )
            .await
        }
    }
}
