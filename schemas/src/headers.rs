//! Names of the Kafka headers Herald writes on uplink records and dead
//! letters, and the trace-context headers every record may carry: a contract
//! between Herald's bridge, which writes them, and every reader (the consumer
//! services, backends, the load tool). docs/schemas.md describes each.

/// The device (MQTT client) id; also the record key.
pub const DEVICE_ID: &str = "herald-device-id";
/// The MQTT topic the device published to.
pub const MQTT_TOPIC: &str = "herald-mqtt-topic";
/// The MQTT QoS, `0`, `1` or `2`.
pub const QOS: &str = "herald-qos";
/// When Herald read the PUBLISH, milliseconds since the Unix epoch.
pub const RECEIVED_AT: &str = "herald-received-at";
/// The uplink's stable identity, `<device_id>:<32 hex digits>`: the same
/// for every retransmission of a message (computed by Herald's bridge, `bridge/src/message_id.rs`; docs/schemas.md).
pub const MESSAGE_ID: &str = "herald-message-id";
/// `1` when the device marked the PUBLISH as a retransmission (MQTT DUP
/// flag), else `0`. Always written, so that a record without it is known
/// to come from elsewhere (or from a Herald before this header).
pub const DUP: &str = "herald-dup";
/// Prefix of headers carrying MQTT 5 user properties.
pub const USER_PROPERTY_PREFIX: &str = "mqtt-user-";
/// The uplink's MQTT 5 Content Type property, as sent.
pub const CONTENT_TYPE: &str = "mqtt-content-type";
/// The uplink's MQTT 5 Response Topic property (request/response), as sent.
pub const RESPONSE_TOPIC: &str = "mqtt-response-topic";
/// The uplink's MQTT 5 Correlation Data property (request/response): its
/// raw bytes, which need not be text.
pub const CORRELATION_DATA: &str = "mqtt-correlation-data";
/// W3C Trace Context: the trace and parent span of a record, under the
/// name W3C's Kafka convention and OpenTelemetry's Kafka instrumentation
/// use. On uplinks it comes from the device's `traceparent` user property,
/// on commands it becomes one; see [`crate::trace`].
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context: vendor-specific trace state accompanying [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
/// Dead letters: Kafka's error for the uplink, e.g. `Message production
/// error: MessageSizeTooLarge (Broker: Message size too large)`.
pub const DEAD_LETTER_REASON: &str = "herald-dead-letter-reason";
/// Dead letters: `too_large`, `invalid` or `not_authorized`.
pub const DEAD_LETTER_KIND: &str = "herald-dead-letter-kind";
/// Dead letters: the Kafka topic the uplink rule chose.
pub const KAFKA_TOPIC: &str = "herald-kafka-topic";
/// Dead letters: the uplink's payload size in bytes, before truncation.
pub const ORIGINAL_SIZE: &str = "herald-original-size";
/// Inbox records (commands one Herald node hands to another): how many
/// times the command has been forwarded between nodes so far.
pub const FORWARDS: &str = "herald-forwards";
/// Inbox records: the node that forwarded the command.
pub const FORWARDED_BY: &str = "herald-forwarded-by";
