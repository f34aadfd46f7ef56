//! Herald's stateless Kafka services. Each is a consumer group that keeps no
//! local state: it turns input records into output records, commits its
//! offset only once Kafka acknowledged the outputs, and sends what it cannot
//! process to the dead-letter topic.

pub mod amount;
pub mod chunking;
pub mod scancode;
pub mod templates;
