//! The broker addresses a run spreads its clients over, as an L4 load
//! balancer in front of several Herald nodes would. `-h` takes one host or
//! a comma-separated list of entries `host`, `host:port`, `[ipv6]` or
//! `[ipv6]:port` (a bare IPv6 address is one entry too); an entry without
//! a port uses `--port`.
//!
//! Which address a client uses: terminal number `i` (the `%i` of its client
//! id, `--startnumber` included) starts on entry `i mod N`, so a fleet
//! spreads evenly in list order; a client named rather than numbered (a
//! fan-in subscriber) uses the entry its client id hashes to (FNV-1a), so
//! that it finds the node of its session again. Reconnecting terminals
//! move on to the next entry (lifecycle.rs): after a failed connect, and
//! with `--move-on-reconnect` after every lost connection.

use anyhow::{bail, Context as _};
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};

/// One entry of `-h`, before name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses the value of `-h`: entries separated by commas, each with its
/// own port or `default_port` (`--port`).
pub fn parse_list(list: &str, default_port: u16) -> anyhow::Result<Vec<NodeAddress>> {
    list.split(',')
        .map(|entry| {
            parse_entry(entry.trim(), default_port)
                .with_context(|| format!("-h {list:?}: expected host[:port][,host[:port]...]"))
        })
        .collect()
}

fn parse_entry(entry: &str, default_port: u16) -> anyhow::Result<NodeAddress> {
    if entry.is_empty() {
        bail!("an entry is empty");
    }
    let (host, port) = if let Some(bracketed) = entry.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            bail!("{entry:?} has no closing ']'");
        };
        if host.parse::<Ipv6Addr>().is_err() {
            bail!("{host:?} in brackets is not an IPv6 address");
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => bail!("{entry:?}: only :port may follow ']'"),
            },
        };
        (host, port)
    } else if entry.matches(':').count() > 1 {
        if entry.parse::<Ipv6Addr>().is_err() {
            bail!("{entry:?} is neither host:port nor an IPv6 address (write [ipv6]:port)");
        }
        (entry, None)
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        bail!("{entry:?} has no host");
    }
    let port = match port {
        Some(text) => parse_port(text).with_context(|| format!("in {entry:?}"))?,
        None if default_port == 0 => bail!("--port 0 is not a port (1 to 65535)"),
        None => default_port,
    };
    Ok(NodeAddress {
        host: host.to_string(),
        port,
    })
}

fn parse_port(text: &str) -> anyhow::Result<u16> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => bail!("port {text:?} is not a number from 1 to 65535"),
    }
}

/// The resolved addresses of a run, in `-h` order.
#[derive(Debug, Clone)]
pub struct Brokers {
    addresses: Vec<SocketAddr>,
}

impl Brokers {
    /// Parses `-h` and resolves each entry once (its first address).
    pub async fn resolve(list: &str, default_port: u16) -> anyhow::Result<Brokers> {
        let mut addresses = Vec::new();
        for node in parse_list(list, default_port)? {
            let address = tokio::net::lookup_host((node.host.as_str(), node.port))
                .await
                .with_context(|| format!("resolving {}", node.host))?
                .next()
                .with_context(|| format!("broker host {} does not resolve", node.host))?;
            addresses.push(address);
        }
        Ok(Brokers::new(addresses))
    }

    /// At least one address.
    pub fn new(addresses: Vec<SocketAddr>) -> Brokers {
        assert!(!addresses.is_empty(), "a run needs a broker address");
        Brokers { addresses }
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The entry terminal number `number` starts on: `number mod N`.
    pub fn for_terminal(&self, number: u32) -> usize {
        number as usize % self.len()
    }

    /// The entry of a client known by its id only: a hash of the id.
    pub fn for_client_id(&self, client_id: &str) -> usize {
        (fnv1a(client_id.as_bytes()) % self.len() as u64) as usize
    }

    /// The entry after `node`, wrapping around.
    pub fn after(&self, node: usize) -> usize {
        (node + 1) % self.len()
    }

    pub fn address(&self, node: usize) -> SocketAddr {
        self.addresses[node % self.len()]
    }
}

/// The addresses joined by commas (a single one prints as before lists).
impl fmt::Display for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, address) in self.addresses.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{address}")?;
        }
        Ok(())
    }
}

/// 64-bit FNV-1a: stable across runs and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: u16) -> NodeAddress {
        NodeAddress {
            host: host.into(),
            port,
        }
    }

    fn error(list: &str) -> String {
        format!("{:#}", parse_list(list, 1883).unwrap_err())
    }

    #[test]
    fn a_single_bare_host_uses_the_port_option() {
        assert_eq!(
            parse_list("127.0.0.1", 1884).unwrap(),
            [node("127.0.0.1", 1884)]
        );
        assert_eq!(
            parse_list("localhost", 1883).unwrap(),
            [node("localhost", 1883)]
        );
    }

    #[test]
    fn entries_with_and_without_ports() {
        assert_eq!(
            parse_list("a:1,b:2", 1883).unwrap(),
            [node("a", 1), node("b", 2)]
        );
        assert_eq!(
            parse_list("a, b:1885 ,10.0.0.3", 1884).unwrap(),
            [node("a", 1884), node("b", 1885), node("10.0.0.3", 1884)]
        );
    }

    #[test]
    fn ipv6_in_brackets_or_bare() {
        assert_eq!(parse_list("[::1]:1883", 1).unwrap(), [node("::1", 1883)]);
        assert_eq!(parse_list("[::1]", 1884).unwrap(), [node("::1", 1884)]);
        assert_eq!(
            parse_list("::1,[fe80::1]:2", 1884).unwrap(),
            [node("::1", 1884), node("fe80::1", 2)]
        );
        assert_eq!(node("::1", 1883).to_string(), "[::1]:1883");
        assert_eq!(node("a", 1).to_string(), "a:1");
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert!(error("").contains("an entry is empty"), "{}", error(""));
        assert!(error("a:1,,b:2").contains("an entry is empty"));
        assert!(error("a:1,").contains("an entry is empty"));
        assert!(error("a:x").contains("port \"x\" is not a number from 1 to 65535"));
        assert!(error("a:70000").contains("1 to 65535"));
        assert!(error("a:0").contains("1 to 65535"));
        assert!(error("a:").contains("port \"\""));
        assert!(error(":1883").contains("has no host"));
        assert!(error("[::1").contains("no closing ']'"));
        assert!(error("[nope]:1").contains("not an IPv6 address"));
        assert!(error("[::1]x").contains("only :port may follow"));
        assert!(error("a:1:2").contains("write [ipv6]:port"));
        let whole = error("a:1,b:x");
        assert!(
            whole.contains("-h \"a:1,b:x\": expected host[:port]"),
            "{whole}"
        );
        let zero = format!("{:#}", parse_list("a", 0).unwrap_err());
        assert!(zero.contains("--port"), "{zero}");
    }

    #[tokio::test]
    async fn resolves_each_entry_in_order() {
        let brokers = Brokers::resolve("127.0.0.1:1,[::1]:2,127.0.0.2", 3)
            .await
            .unwrap();
        assert_eq!(brokers.len(), 3);
        assert_eq!(brokers.to_string(), "127.0.0.1:1,[::1]:2,127.0.0.2:3");
        let single = Brokers::resolve("127.0.0.1", 1883).await.unwrap();
        assert_eq!(single.to_string(), "127.0.0.1:1883");
    }

    fn three() -> Brokers {
        Brokers::new(
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
        )
    }

    #[test]
    fn terminals_go_round_robin_and_move_on_in_order() {
        let brokers = three();
        let nodes: Vec<usize> = (0..7).map(|i| brokers.for_terminal(i)).collect();
        assert_eq!(nodes, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(
            (brokers.after(0), brokers.after(1), brokers.after(2)),
            (1, 2, 0)
        );
        assert_eq!(brokers.address(brokers.after(2)).port(), 1);
        let one = Brokers::new(vec!["127.0.0.1:1883".parse().unwrap()]);
        assert_eq!((one.for_terminal(5), one.after(0)), (0, 0));
    }

    #[test]
    fn named_clients_hash_to_a_stable_entry() {
        let brokers = three();
        let node = brokers.for_client_id("bench-sub");
        assert_eq!(node, brokers.for_client_id("bench-sub"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let used: std::collections::BTreeSet<usize> = (0..30)
            .map(|i| brokers.for_client_id(&format!("sub-{i}")))
            .collect();
        assert_eq!(used.len(), 3, "ids spread over every entry");
    }
}
