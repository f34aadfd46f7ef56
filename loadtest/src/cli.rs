//! Command-line interface, following emqtt-bench's conventions (`conn`,
//! `sub`, `pub`; `-c` clients, `-i`/`-R` connect pacing, `-q`, `-s`, `-t`
//! with `%i` and `%c`, `-h`/`-p`, `--ifaddr`; `-h` also takes a list of
//! nodes, brokers.rs), plus the terminal-platform
//! scenarios `fleet`, `uplink`, `announce`, `downlink` and `storm`, and the
//! loss-counting MQTT fan-in `fanin`.

use crate::backoff::BackoffPolicy;
use crate::impairment::Impairments;
use crate::lifecycle::Firmware;
use clap::{ArgAction, Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "herald-loadtest",
    version = herald_build_info::VERSION,
    disable_help_flag = true,
    about = "Simulate payment-terminal fleets against Herald or any MQTT broker"
)]
pub struct Cli {
    #[arg(long, action = ArgAction::Help, global = true, help = "Print help")]
    pub help: Option<bool>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connect clients and hold them (emqtt-bench conn).
    Conn(ConnArgs),
    /// Subscribe clients to a topic and measure what they receive (emqtt-bench sub).
    Sub(SubArgs),
    /// Publish at a fixed total rate and measure acknowledgements (emqtt-bench pub).
    Pub(PubArgs),
    /// Terminals with device credentials connect and stay idle: connect rate,
    /// failures, and the broker's memory per session.
    Fleet(FleetArgs),
    /// Terminals publish scan results at a fixed total rate, reconnecting and
    /// retransmitting as firmware does: PUBACK and MQTT-to-Kafka latency, and
    /// every message accounted for in Kafka (exit code 2 if one PUBACKed
    /// message is missing there).
    Uplink(UplinkArgs),
    /// Payment events go to Kafka at a fixed rate: time until the simulated
    /// speaker hears the announcement, and every payment accounted for
    /// (delivered, receipted, lost; exit code 2 if one is lost).
    Announce(AnnounceArgs),
    /// Downlink commands go straight to Herald's downlink topic at a fixed
    /// rate: time until the terminal has them, and every command accounted
    /// for (delivered, receipted, lost; exit code 2 if one is lost).
    Downlink(DownlinkArgs),
    /// Plain MQTT fan-in with every message accounted for: publishers send
    /// QoS 1 as fast as their in-flight window allows (or at -r), one
    /// subscriber acknowledges everything; sent, acknowledged, received,
    /// acknowledged but lost (exit code 2 if not 0), duplicates. Optionally
    /// with subscribers that stop reading or acknowledge late.
    Fanin(FaninArgs),
    /// The whole fleet drops and reconnects at once.
    Storm(StormArgs),
    /// Writes a synthetic fleet (one online PresenceEvent per device) into a
    /// presence topic, to measure a node's presence replay at start.
    PresenceFill(PresenceFillArgs),
    /// Draw latency distributions of JSON reports as an SVG plot.
    Plot(PlotArgs),
}

/// Where the broker is and how clients present themselves.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Broker host, or several nodes as an L4 load balancer would spread
    /// clients over them: host[:port],host[:port],... ([ipv6]:port; an
    /// entry without a port uses --port). Terminal i starts on entry
    /// i mod N (i counts from --startnumber).
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port (of the -h entries that have none).
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub port: u16,
    /// Local source addresses to spread connections over (comma separated),
    /// e.g. 127.0.0.2,127.0.0.3: each fits ~28k connections per broker address.
    #[arg(long, value_delimiter = ',')]
    pub ifaddr: Vec<IpAddr>,
    /// Username (default: none, or the client id with --fleet-key).
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    pub password: Option<String>,
    /// Herald fleet key (base64): each client signs its own device password.
    #[arg(long, env = "HERALD_FLEET_KEY")]
    pub fleet_key: Option<String>,
    /// Keepalive in seconds.
    #[arg(short = 'k', long, default_value_t = 60)]
    pub keepalive: u16,
    /// Write the full JSON report (counts, percentiles, distributions) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the full JSON report on stdout instead of the short summary.
    #[arg(long)]
    pub json: bool,
}

/// How the simulated terminals deal with their connection, as firmware does.
#[derive(Args, Debug, Clone)]
pub struct FirmwareArgs {
    /// Do not reconnect after the connection drops or is refused (and so do
    /// not retransmit).
    #[arg(long)]
    pub no_reconnect: bool,
    /// First reconnect backoff ceiling in ms; it doubles per failed attempt
    /// up to --backoff-max-ms, and each wait is uniformly random below it.
    #[arg(long, default_value_t = 100)]
    pub backoff_initial_ms: u64,
    /// Largest reconnect backoff ceiling in ms.
    #[arg(long, default_value_t = 5000)]
    pub backoff_max_ms: u64,
    /// Connect with clean session = 1 (default: a persistent session).
    #[arg(long)]
    pub clean_session: bool,
    /// Most unacknowledged QoS 1 messages per terminal (0: no limit).
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// Reconnect to the next -h entry after each lost connection, as a
    /// re-balancing load balancer would (by default terminals go back to
    /// the same one; after a failed connect they always move on).
    #[arg(long)]
    pub move_on_reconnect: bool,
}

impl FirmwareArgs {
    pub fn firmware(&self) -> Firmware {
        Firmware {
            reconnect: !self.no_reconnect,
            backoff: BackoffPolicy {
                initial: Duration::from_millis(self.backoff_initial_ms.max(1)),
                max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_initial_ms)),
            },
            clean_session: self.clean_session,
            max_inflight: (self.inflight > 0).then_some(self.inflight),
            move_on_reconnect: self.move_on_reconnect,
        }
    }
}

/// How many clients and how fast they connect.
#[derive(Args, Debug, Clone)]
pub struct Clients {
    /// Number of clients.
    #[arg(short = 'c', long = "count", default_value_t = 100)]
    pub count: u32,
    /// Milliseconds between connects (ignored with --connrate).
    #[arg(short = 'i', long = "interval", default_value_t = 10)]
    pub interval_ms: u64,
    /// Connects per second (open loop); overrides --interval.
    #[arg(short = 'R', long = "connrate")]
    pub connrate: Option<f64>,
    /// Client id template: %i is the client's index, %p this process's id
    /// (so that a `sub` and a `pub` run side by side do not take over each
    /// other's sessions).
    #[arg(long = "client-id", default_value = "bench-%p-%i")]
    pub client_id: String,
    /// Index of the first client.
    #[arg(short = 'n', long = "startnumber", default_value_t = 0)]
    pub start_number: u32,
}

impl Clients {
    /// Connects per second.
    pub fn connect_rate(&self) -> f64 {
        self.connrate
            .unwrap_or(1000.0 / self.interval_ms.max(1) as f64)
    }

    pub fn client_id(&self, index: u32) -> String {
        self.client_id_named(&(self.start_number + index).to_string())
    }

    /// The client id template with `name` for %i (a scenario's other
    /// clients, e.g. its subscriber: `bench-%p-sub`).
    pub fn client_id_named(&self, name: &str) -> String {
        self.client_id
            .replace("%i", name)
            .replace("%p", &std::process::id().to_string())
    }
}

/// Expands a topic template: %i the client index, %c the client id.
pub fn topic(template: &str, index: u32, client_id: &str) -> String {
    template
        .replace("%i", &index.to_string())
        .replace("%c", client_id)
}

#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub clients: Clients,
    /// Seconds to hold the connections after the last connect.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Pid of the broker on this machine, to report its memory per connection.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

#[derive(Args, Debug, Clone)]
pub struct SubArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub clients: Clients,
    /// Topic filter template (%i, %c).
    #[arg(short = 't', long)]
    pub topic: String,
    /// Subscription QoS.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Seconds to receive after subscribing.
    #[arg(short = 'd', long, default_value_t = 30)]
    pub duration: u64,
}

#[derive(Args, Debug, Clone)]
pub struct PubArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub clients: Clients,
    /// Topic template (%i, %c).
    #[arg(short = 't', long)]
    pub topic: String,
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 16: the send time and a sequence number).
    #[arg(short = 's', long, default_value_t = 256)]
    pub size: usize,
    /// Total messages per second across all clients.
    #[arg(short = 'r', long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to publish.
    #[arg(short = 'd', long, default_value_t = 30)]
    pub duration: u64,
    /// Also subscribe each client to this filter template, to measure end-to-end
    /// latency through the broker (fan-in when all publish to one topic).
    #[arg(long)]
    pub subscribe: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub clients: Clients,
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

#[derive(Args, Debug, Clone)]
pub struct UplinkArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub clients: Clients,
    /// Scan results per second across the fleet.
    #[arg(short = 'r', long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(short = 'd', long, default_value_t = 30)]
    pub duration: u64,
    /// Kafka bootstrap servers, to read the scans back (and measure
    /// MQTT-to-Kafka latency on the same clock).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// Kafka topic Herald writes scan uplinks to.
    #[arg(long, default_value = "herald.uplink.scan")]
    pub kafka_topic: String,
    /// After the publishing phase, how long terminals may still send the
    /// scans they fell behind with and wait (reconnecting as needed) for
    /// their outstanding PUBACKs, in seconds.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// After the terminals are done, how long the read-back waits for
    /// missing scans once Kafka's end offsets are reached and nothing new
    /// comes (seconds). Waited only while a scan sent is not in Kafka.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    #[command(flatten)]
    pub firmware: FirmwareArgs,
}

#[derive(Args, Debug, Clone)]
pub struct AnnounceArgs {
    #[command(flatten)]
    pub target: Target,
    /// Simulated speakers.
    #[command(flatten)]
    pub clients: Clients,
    /// Payment events per second.
    #[arg(short = 'r', long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(short = 'd', long, default_value_t = 30)]
    pub duration: u64,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// Topic the announcer consumes.
    #[arg(long, default_value = "herald.payments")]
    pub payments_topic: String,
    #[command(flatten)]
    pub receipts: ReceiptArgs,
    #[command(flatten)]
    pub firmware: FirmwareArgs,
}

/// How commands (or payments) expire and how long their receipts are
/// waited for: shared by `downlink` and `announce`.
#[derive(Args, Debug, Clone)]
pub struct ReceiptArgs {
    /// Topic Herald writes delivery receipts to.
    #[arg(long, default_value = "herald.receipts")]
    pub receipts_topic: String,
    /// Seconds a command or payment may wait for its terminal (its expiry;
    /// 0: Herald's and the announcer's defaults). With --stalled, commands
    /// to the stalled terminals end only by expiring (or being refused):
    /// keep it below --settle so that their receipts come within the run.
    #[arg(long, default_value_t = 60)]
    pub ttl: u64,
    /// After producing, how long to wait without any new delivery or
    /// receipt before counting what is missing as lost (seconds). Waited
    /// only while something is missing; the default outlasts the consumer
    /// group session timeout (45 s) a restarted Herald waits out before it
    /// consumes commands again.
    #[arg(long, default_value_t = 60)]
    pub settle: u64,
}

#[derive(Args, Debug, Clone)]
pub struct DownlinkArgs {
    #[command(flatten)]
    pub target: Target,
    /// Terminals receiving the commands (round robin).
    #[command(flatten)]
    pub clients: Clients,
    /// Commands per second across the fleet.
    #[arg(short = 'r', long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds to produce commands.
    #[arg(short = 'd', long, default_value_t = 30)]
    pub duration: u64,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// Topic Herald consumes DownlinkCommands from.
    #[arg(long, default_value = "herald.downlink")]
    pub downlink_topic: String,
    #[command(flatten)]
    pub receipts: ReceiptArgs,
    #[command(flatten)]
    pub firmware: FirmwareArgs,
    /// Terminals among -c that stall or are slow: the first --stalled
    /// ones, then the next --slow ones (commands go round robin, so each
    /// gets its share).
    #[command(flatten)]
    pub impaired: ImpairmentArgs,
}

/// Clients that misbehave as broken devices do (issue #8, item 2.7).
#[derive(Args, Debug, Clone)]
pub struct ImpairmentArgs {
    /// Clients that subscribe and then never read from their socket again
    /// (connection held open, PINGREQ still sent, no reconnect).
    #[arg(long, default_value_t = 0)]
    pub stalled: u32,
    /// Clients that acknowledge each message --slow-ack-ms after it arrived.
    #[arg(long, default_value_t = 0)]
    pub slow: u32,
    /// How long a slow client holds each PUBACK, in ms.
    #[arg(long, default_value_t = 200)]
    pub slow_ack_ms: u64,
}

impl ImpairmentArgs {
    pub fn impairments(&self) -> Impairments {
        Impairments {
            stalled: self.stalled,
            slow: self.slow,
            slow_ack: Duration::from_millis(self.slow_ack_ms),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct FaninArgs {
    #[command(flatten)]
    pub target: Target,
    /// Publishers.
    #[command(flatten)]
    pub clients: Clients,
    /// Topic template of the publishers (%i, %c).
    #[arg(short = 't', long, default_value = "bench/in/%i")]
    pub topic: String,
    /// The subscriber's topic filter.
    #[arg(long, default_value = "bench/in/#")]
    pub filter: String,
    /// QoS of the publishers and of the subscription.
    #[arg(short = 'q', long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes; the message's id (about 40 bytes) comes first
    /// and is sent whole even if longer.
    #[arg(short = 's', long, default_value_t = 256)]
    pub size: usize,
    /// Total messages per second across all publishers, on an open-loop
    /// schedule (latencies from the scheduled time). Default: every
    /// publisher sends as fast as its in-flight window allows.
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// Seconds to publish.
    #[arg(short = 'd', long, default_value_t = 30)]
    pub duration: u64,
    /// Most unacknowledged QoS 1/2 messages per publisher (0: no limit).
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
    /// After the publishing phase, how long to wait without any new
    /// acknowledgement or reception before counting what is missing
    /// (seconds). Waited only while something sent is unacknowledged or
    /// not received.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    /// Extra subscribers on the same filter (QoS 1, persistent sessions)
    /// that stall or are slow; the loss accounting is the main subscriber's.
    #[command(flatten)]
    pub impaired: ImpairmentArgs,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub clients: Clients,
    /// Seconds connected before the storm.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
}

#[derive(Args, Debug, Clone)]
pub struct PresenceFillArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap_servers: String,
    /// The presence topic (compacted; e.g. a test copy, not production's).
    #[arg(long)]
    pub topic: String,
    /// Devices to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub devices: u64,
    /// Node names the devices are spread over (`fill-node-<i>`).
    #[arg(long, default_value_t = 50)]
    pub nodes: u64,
    /// Device id prefix; ids are the prefix and an 8-digit number.
    #[arg(long, default_value = "fill-")]
    pub prefix: String,
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// JSON reports (from --report) to draw, one curve per latency series.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Output SVG file.
    #[arg(short = 'o', long, default_value = "latency.svg")]
    pub output: PathBuf,
    #[arg(long, default_value = "Latency distribution")]
    pub title: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emqtt_bench_style_flags() {
        let cli = Cli::try_parse_from([
            "herald-loadtest",
            "pub",
            "-h",
            "10.0.0.1",
            "-p",
            "1884",
            "-c",
            "50",
            "-i",
            "5",
            "-t",
            "t/%i/%c",
            "-q",
            "1",
            "-s",
            "64",
            "-r",
            "500",
            "--ifaddr",
            "127.0.0.2,127.0.0.3",
        ])
        .unwrap();
        let Command::Pub(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            (args.target.host.as_str(), args.target.port),
            ("10.0.0.1", 1884)
        );
        assert_eq!(
            (args.clients.count, args.qos, args.size, args.rate),
            (50, 1, 64, 500.0)
        );
        assert_eq!(args.clients.connect_rate(), 200.0);
        assert_eq!(args.target.ifaddr.len(), 2);
        let id = args.clients.client_id(7);
        assert_eq!(id, format!("bench-{}-7", std::process::id()));
        assert_eq!(topic(&args.topic, 7, &id), format!("t/7/{id}"));
    }

    #[test]
    fn fanin_defaults_and_impaired_clients() {
        let cli = Cli::try_parse_from([
            "herald-loadtest",
            "fanin",
            "-p",
            "21885",
            "--stalled",
            "2",
            "--slow",
            "1",
            "--slow-ack-ms",
            "50",
            "--client-id",
            "fault-fanin-%i",
        ])
        .unwrap();
        let Command::Fanin(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.clients.count, 100);
        assert_eq!(
            (args.topic.as_str(), args.filter.as_str()),
            ("bench/in/%i", "bench/in/#")
        );
        assert_eq!(
            (args.qos, args.rate, args.inflight, args.settle),
            (1, None, 32, 10)
        );
        let impairments = args.impaired.impairments();
        assert_eq!((impairments.stalled, impairments.slow), (2, 1));
        assert_eq!(impairments.slow_ack, Duration::from_millis(50));
        assert_eq!(args.clients.client_id_named("sub"), "fault-fanin-sub");

        let cli = Cli::try_parse_from([
            "herald-loadtest",
            "downlink",
            "--stalled",
            "5",
            "--slow",
            "5",
            "--ttl",
            "10",
        ])
        .unwrap();
        let Command::Downlink(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            (args.impaired.stalled, args.impaired.slow, args.receipts.ttl),
            (5, 5, 10)
        );
        assert_eq!(args.impaired.slow_ack_ms, 200);
    }

    #[test]
    fn several_nodes_and_moving_on_reconnect() {
        let cli = Cli::try_parse_from([
            "herald-loadtest",
            "uplink",
            "-h",
            "127.0.0.1:1884,127.0.0.1:1885,[::1]",
            "-p",
            "1886",
            "--move-on-reconnect",
        ])
        .unwrap();
        let Command::Uplink(args) = cli.command else {
            panic!()
        };
        let nodes = crate::brokers::parse_list(&args.target.host, args.target.port).unwrap();
        let nodes: Vec<String> = nodes.iter().map(ToString::to_string).collect();
        assert_eq!(nodes, ["127.0.0.1:1884", "127.0.0.1:1885", "[::1]:1886"]);
        assert!(args.firmware.firmware().move_on_reconnect);

        let cli = Cli::try_parse_from(["herald-loadtest", "announce"]).unwrap();
        let Command::Announce(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            (args.target.host.as_str(), args.target.port),
            ("127.0.0.1", 1883)
        );
        assert!(!args.firmware.firmware().move_on_reconnect);
    }

    #[test]
    fn connrate_overrides_interval_and_qos_is_checked() {
        let cli = Cli::try_parse_from([
            "herald-loadtest",
            "conn",
            "-c",
            "10",
            "-R",
            "2500",
            "--startnumber",
            "100",
        ])
        .unwrap();
        let Command::Conn(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.clients.connect_rate(), 2500.0);
        assert_eq!(
            args.clients.client_id(0),
            format!("bench-{}-100", std::process::id())
        );
        assert!(Cli::try_parse_from(["herald-loadtest", "sub", "-t", "x", "-q", "3"]).is_err());
        assert!(
            Cli::try_parse_from(["herald-loadtest", "pub"]).is_err(),
            "-t is required"
        );
    }
}
