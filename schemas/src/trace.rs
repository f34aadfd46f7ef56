//! W3C Trace Context across Herald: the `traceparent` (and `tracestate`)
//! that lets one payment be followed from the scan box to the speaker.
//!
//! Herald and its services carry trace context; they do not trace. A device's
//! `traceparent` user property becomes a Kafka header of the same name, a
//! command's `traceparent` header becomes a user property on the MQTT
//! publication, and the consumer services copy it from each input record to
//! what they produce from it (docs/schemas.md, "Trace context"). Only a value
//! of the shape W3C Trace Context §3.2 defines is copied: the check is cheap
//! and bounded, and a malformed value is dropped rather than spread.

use std::fmt;

/// The longest `traceparent` Herald carries. Version `00` is exactly
/// [`TRACEPARENT_V00_LEN`] bytes; a future version may append fields
/// (§3.2.4), up to this bound.
pub const MAX_TRACEPARENT_LEN: usize = 256;
/// `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_V00_LEN: usize = 55;
/// The longest `tracestate` Herald carries: the 512 characters W3C Trace
/// Context §3.3.1.5 asks every participant to propagate at least.
pub const MAX_TRACESTATE_LEN: usize = 512;
/// At most this many list members in a `tracestate` (§3.3.1.5).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Why a `traceparent` value is not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTraceparent {
    #[error("longer than {MAX_TRACEPARENT_LEN} bytes")]
    TooLong,
    #[error("not <version>-<trace-id>-<parent-id>-<trace-flags> in lowercase hex")]
    Format,
    #[error("version ff is forbidden")]
    ForbiddenVersion,
    #[error("the trace id is all zeros")]
    ZeroTraceId,
    #[error("the parent id is all zeros")]
    ZeroParentId,
}

fn lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Checks `value` against W3C Trace Context §3.2.2: `version "-" trace-id
/// "-" parent-id "-" trace-flags`, each lowercase hex of 2, 32, 16 and 2
/// digits; version `ff`, an all-zero trace id and an all-zero parent id are
/// invalid. Version `00` is exactly 55 bytes; a higher version may go on
/// after a `-` (§3.2.4), up to [`MAX_TRACEPARENT_LEN`] bytes.
pub fn check_traceparent(value: &[u8]) -> Result<(), InvalidTraceparent> {
    if value.len() > MAX_TRACEPARENT_LEN {
        return Err(InvalidTraceparent::TooLong);
    }
    if value.len() < TRACEPARENT_V00_LEN
        || value[2] != b'-'
        || value[35] != b'-'
        || value[52] != b'-'
    {
        return Err(InvalidTraceparent::Format);
    }
    let (version, trace_id, parent_id, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    if ![version, trace_id, parent_id, flags]
        .iter()
        .all(|field| lower_hex(field))
    {
        return Err(InvalidTraceparent::Format);
    }
    if version == b"ff" {
        return Err(InvalidTraceparent::ForbiddenVersion);
    }
    let rest = &value[TRACEPARENT_V00_LEN..];
    let tail_ok = if version == b"00" {
        rest.is_empty()
    } else {
        rest.is_empty() || rest[0] == b'-'
    };
    if !tail_ok {
        return Err(InvalidTraceparent::Format);
    }
    if trace_id.iter().all(|&b| b == b'0') {
        return Err(InvalidTraceparent::ZeroTraceId);
    }
    if parent_id.iter().all(|&b| b == b'0') {
        return Err(InvalidTraceparent::ZeroParentId);
    }
    Ok(())
}

/// A cheap check of a `tracestate` (W3C Trace Context §3.3): at most
/// [`MAX_TRACESTATE_LEN`] bytes of printable ASCII, at most
/// [`MAX_TRACESTATE_MEMBERS`] comma-separated members, each non-empty one
/// a `key=value`. Keys and values are not checked further: Herald only
/// carries the value, it never reads it.
pub fn is_valid_tracestate(value: &[u8]) -> bool {
    value.len() <= MAX_TRACESTATE_LEN
        && value.iter().all(|b| (0x20..=0x7e).contains(b))
        && value.split(|&b| b == b',').count() <= MAX_TRACESTATE_MEMBERS
        && value.split(|&b| b == b',').all(|member| {
            let member = member.trim_ascii();
            member.is_empty() || member.iter().skip(1).any(|&b| b == b'=')
        })
}

/// A checked trace context, ready to be written as Kafka headers or MQTT
/// user properties (the same names, [`crate::headers::TRACEPARENT`] and
/// [`crate::headers::TRACESTATE`], in both).
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// The context of `traceparent`, with `tracestate` when it is valid too.
    /// An invalid `traceparent` invalidates the whole context (§3.3: a
    /// tracestate is only read alongside a valid traceparent); an invalid
    /// `tracestate` alone is left out and the traceparent still carried.
    pub fn parse(
        traceparent: &[u8],
        tracestate: Option<&[u8]>,
    ) -> Result<Self, InvalidTraceparent> {
        check_traceparent(traceparent)?;
        // Checked above: ASCII only.
        let traceparent = String::from_utf8_lossy(traceparent).into_owned();
        let tracestate = tracestate
            .filter(|state| !state.is_empty() && is_valid_tracestate(state))
            .map(|state| String::from_utf8_lossy(state).into_owned());
        Ok(Self {
            traceparent,
            tracestate,
        })
    }

    /// The context among a Kafka record's headers: its last `traceparent`
    /// and last `tracestate` (as the Java client's `Headers.lastHeader`,
    /// which OpenTelemetry's Kafka instrumentation reads). `None` when there
    /// is no `traceparent`; `Some(Err)` when it is not valid.
    pub fn from_headers<'a, I>(headers: I) -> Option<Result<Self, InvalidTraceparent>>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        let (mut parent, mut state) = (None, None);
        for (key, value) in headers {
            if key == crate::headers::TRACEPARENT {
                parent = Some(value.unwrap_or_default());
            } else if key == crate::headers::TRACESTATE {
                state = value;
            }
        }
        parent.map(|parent| Self::parse(parent, state))
    }

    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// `(name, value)` pairs, `traceparent` first.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        std::iter::once((crate::headers::TRACEPARENT, self.traceparent.as_str())).chain(
            self.tracestate
                .as_deref()
                .map(|state| (crate::headers::TRACESTATE, state)),
        )
    }

    /// Bytes the pairs take as headers (names and values): at most
    /// 11 + 256 + 10 + 512.
    pub fn encoded_len(&self) -> usize {
        self.pairs()
            .map(|(name, value)| name.len() + value.len())
            .sum()
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent)
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of W3C Trace Context §3.2.3.
    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_is_valid() {
        assert_eq!(EXAMPLE.len(), TRACEPARENT_V00_LEN);
        assert_eq!(check_traceparent(EXAMPLE.as_bytes()), Ok(()));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(check_traceparent(unsampled.as_bytes()), Ok(()));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        use InvalidTraceparent::*;
        for (value, why) in [
            ("", Format),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                Format,
            ),
            // Uppercase hex: §3.2.2 says lowercase (HEXDIGLC).
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                Format,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                Format,
            ),
            // Version 00 is exactly 55 bytes.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
                Format,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ForbiddenVersion,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ZeroParentId,
            ),
        ] {
            assert_eq!(check_traceparent(value.as_bytes()), Err(why), "{value:?}");
        }
        let long = format!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
            "a".repeat(300)
        );
        assert_eq!(
            check_traceparent(long.as_bytes()),
            Err(InvalidTraceparent::TooLong)
        );
    }

    #[test]
    fn a_higher_version_may_carry_more_fields() {
        // §3.2.4: parse the first 55 bytes; more fields follow after a `-`.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abcd";
        assert_eq!(check_traceparent(v1.as_bytes()), Ok(()));
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01abcd";
        assert_eq!(
            check_traceparent(v1.as_bytes()),
            Err(InvalidTraceparent::Format)
        );
    }

    #[test]
    fn tracestate_is_bounded_printable_key_values() {
        assert!(is_valid_tracestate(
            b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        ));
        assert!(is_valid_tracestate(b"rojo=1, congo=2"));
        assert!(is_valid_tracestate(b"vendor@tenant=x"));
        assert!(!is_valid_tracestate(b"rojo"));
        assert!(!is_valid_tracestate(b"=x"));
        assert!(!is_valid_tracestate("rojo=\u{e9}".as_bytes()));
        assert!(!is_valid_tracestate(b"rojo=1\n"));
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(!is_valid_tracestate(many.as_bytes()));
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE_LEN));
        assert!(!is_valid_tracestate(long.as_bytes()));
    }

    #[test]
    fn a_context_keeps_a_valid_tracestate_only() {
        let context = TraceContext::parse(EXAMPLE.as_bytes(), Some(b"rojo=1")).unwrap();
        assert_eq!(
            context.pairs().collect::<Vec<_>>(),
            [("traceparent", EXAMPLE), ("tracestate", "rojo=1")]
        );
        assert_eq!(context.encoded_len(), 11 + 55 + 10 + 6);
        let context = TraceContext::parse(EXAMPLE.as_bytes(), Some(b"not a list")).unwrap();
        assert_eq!(context.tracestate(), None);
        assert_eq!(context.pairs().count(), 1);
        assert!(TraceContext::parse(b"00-garbage", Some(b"rojo=1")).is_err());
    }

    #[test]
    fn the_last_trace_headers_of_a_record_count() {
        let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let headers = [
            ("traceparent", Some(other.as_bytes())),
            ("herald-device-id", Some(&b"d"[..])),
            ("tracestate", Some(&b"a=1"[..])),
            ("traceparent", Some(EXAMPLE.as_bytes())),
        ];
        let context = TraceContext::from_headers(headers).unwrap().unwrap();
        assert_eq!(
            (context.traceparent(), context.tracestate()),
            (EXAMPLE, Some("a=1"))
        );
        assert!(TraceContext::from_headers([("herald-dup", Some(&b"0"[..]))]).is_none());
        assert_eq!(
            TraceContext::from_headers([("traceparent", None)]),
            Some(Err(InvalidTraceparent::Format))
        );
    }
}
