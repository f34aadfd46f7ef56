//! PROXY protocol v2 headers, as a listener with `broker.proxy_protocol` on
//! reads them before any MQTT or TLS byte (broker/src/proxy_protocol.rs).
//!
//! Checked besides "no panic":
//! - the read never consumes more than the 16 fixed bytes plus the largest
//!   address block accepted, so an oversized header is refused, not buffered;
//! - an accepted header consumed exactly the length it announced, so the
//!   bytes behind it (the terminal's CONNECT) stay unread.
#![no_main]

use herald_broker::bench_api::{read_proxy_header, MAX_PROXY_ADDRESS_BLOCK};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (result, consumed) = read_proxy_header(data);
    assert!(consumed <= 16 + MAX_PROXY_ADDRESS_BLOCK);
    if result.is_ok() {
        let announced = u16::from_be_bytes([data[14], data[15]]) as usize;
        assert_eq!(consumed, 16 + announced);
    }
});
