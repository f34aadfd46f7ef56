//! Topic names and filters through the broker's checks (`topic::check_name`,
//! `topic::check_filter` with the default limits or the widest a config may
//! set), then a sequence of subscribe, unsubscribe and match operations on the
//! broker's subscription router and of retain and look-up operations on its
//! retained store, all checked against a naive model: a map of
//! (client, filter) → options, a map of retained topics, and a filter
//! matcher written from the MQTT specification (§4.7), one level at a time.
//!
//! Filters and topic names are built from levels (words, `+`, `#`, empty
//! levels, `$`-prefixed, free text) and may repeat a level thousands of times,
//! up to MQTT's 65,535-byte limit, so that a recursion over levels shows. The
//! operations run on a thread with a tokio worker's default 2 MiB stack,
//! where the broker runs them.
//!
//! Also checked: the topic checks accept exactly the valid names and filters
//! (MQTT §4.7.1, §4.7.3) within the limits; `topic::filter_matches` agrees
//! with the model's matcher; every topic a filter matches starts with
//! `topic::literal_prefix(filter)` (the retained store's range scan).
#![no_main]

use arbitrary::Arbitrary;
use herald_broker::bench_api::{
    check_topic_filter, check_topic_name, filter_matches, literal_prefix, Matched, RetainedOps,
    RouterOps,
};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

const CLIENTS: u8 = 6;
const WORDS: [&str; 6] = ["devices", "dev-1", "down", "a", "cmd", "$SYS"];
const MAX_TOPIC_LEN: usize = 65_535;
const WORKER_STACK: usize = 2 * 1024 * 1024;
/// LimitsConfig's defaults, and the widest values its validation accepts.
const DEFAULT_LIMITS: Limits = Limits { length: 1024, levels: 32 };
const WIDEST_LIMITS: Limits = Limits { length: 65_535, levels: 1024 };
const RETAINED_MAX_MESSAGES: usize = 8;
const RETAINED_MAX_BYTES: usize = 600;

#[derive(Clone, Copy, Debug)]
struct Limits {
    length: usize,
    levels: usize,
}

#[derive(Arbitrary, Debug, Clone)]
enum Level {
    Word(u8),
    Plus,
    Hash,
    Empty,
    Text(String),
}

#[derive(Arbitrary, Debug, Clone)]
struct Path {
    levels: Vec<Level>,
    /// Insert copies of a level at a position: deep filters and topics. Up to
    /// 1,099 copies (around the widest level limit, 1,024), or with `huge` up
    /// to 65,535 (as long as the 65,535-byte limit of MQTT allows).
    deep: Option<(u16, u16, bool, Level)>,
}

impl Path {
    fn render(&self) -> String {
        let level = |l: &Level| -> String {
            match l {
                Level::Word(i) => WORDS[usize::from(*i) % WORDS.len()].to_owned(),
                Level::Plus => "+".into(),
                Level::Hash => "#".into(),
                Level::Empty => String::new(),
                Level::Text(t) => t.clone(),
            }
        };
        let mut levels: Vec<String> = self.levels.iter().map(level).collect();
        if let Some((at, count, huge, l)) = &self.deep {
            let at = usize::from(*at) % (levels.len() + 1);
            let text = level(l);
            // Keep within the topic length limit, or the copies are wasted.
            let room = MAX_TOPIC_LEN.saturating_sub(levels.iter().map(|l| l.len() + 1).sum());
            let count = if *huge { *count } else { *count % 1100 };
            let count = usize::from(count).min(room / (text.len() + 1));
            if count > 0 {
                // `count` copies joined by `/`, built in one go.
                let mut copies = format!("{text}/").repeat(count);
                copies.pop();
                levels.insert(at, copies);
            }
        }
        levels.join("/")
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe {
        client: u8,
        filter: Path,
        qos: u8,
        no_local: bool,
        retain_as_published: bool,
    },
    Unsubscribe {
        client: u8,
        filter: Path,
    },
    /// Unsubscribe a filter subscribed before (random filters rarely hit one).
    UnsubscribeExisting {
        index: u16,
    },
    Match {
        topic: Path,
    },
    /// Match a topic made from a subscribed filter, wildcards filled in.
    MatchLike {
        index: u16,
        fill: Level,
    },
    Retain {
        topic: Path,
        payload_len: u8,
    },
    Retained {
        filter: Path,
        limit: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    widest_limits: bool,
    ops: Vec<Op>,
}

/// MQTT §4.7.1, §4.7.3: a topic filter.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

/// MQTT §4.7.3: a topic name.
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_LEN && !topic.contains(['+', '#', '\0'])
}

fn within(limits: Limits, s: &str) -> bool {
    s.len() <= limits.length && s.split('/').nth(limits.levels).is_none()
}

/// What the broker lets reach the router: `topic::check_filter`, which
/// must agree with the specification and the limits.
fn filter_admitted(limits: Limits, filter: &str) -> bool {
    let checked = check_topic_filter(filter, limits.length, limits.levels);
    let expected = within(limits, filter) && valid_filter(filter);
    assert_eq!(checked.is_ok(), expected, "check_filter({}) = {checked:?}", short(filter));
    // Shared subscriptions ($share/<group>/<filter>) route to one member of
    // a group, not to every subscriber: the router's unit tests cover them,
    // the model here does not.
    expected && !filter.starts_with("$share/")
}

/// `topic::check_name`, likewise.
fn name_admitted(limits: Limits, topic: &str) -> bool {
    let checked = check_topic_name(topic, limits.length, limits.levels);
    let expected = within(limits, topic) && valid_topic(topic);
    assert_eq!(checked.is_ok(), expected, "check_name({}) = {checked:?}", short(topic));
    expected
}

/// MQTT §4.7: does `filter` match `topic`? Level by level, no shortcuts.
fn reference_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    // §4.7.2: wildcards at the first level do not match topics starting with $.
    if topic.starts_with('$') && matches!(filter.split('/').next(), Some("+" | "#")) {
        return false;
    }
    loop {
        match (f.next(), t.next()) {
            (None, None) => return true,
            // `a/#` matches `a` and everything below it.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            _ => return false,
        }
    }
}

#[derive(Clone, Copy)]
struct Options {
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
}

#[derive(Default)]
struct Model {
    subs: BTreeMap<(String, String), Options>,
    /// Retained topic → payload length.
    retained: BTreeMap<String, usize>,
}

impl Model {
    fn matched(&self, topic: &str) -> Vec<Matched> {
        let mut merged: BTreeMap<&str, Matched> = BTreeMap::new();
        for ((client, filter), o) in &self.subs {
            if !reference_matches(filter, topic) {
                continue;
            }
            merged
                .entry(client)
                .and_modify(|m| {
                    m.qos = m.qos.max(o.qos);
                    m.no_local &= o.no_local;
                    m.retain_as_published |= o.retain_as_published;
                })
                .or_insert(Matched {
                    client_id: client.clone(),
                    qos: o.qos,
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                });
        }
        merged.into_values().collect()
    }

    fn retain(&mut self, topic: &str, len: usize) -> Result<(), &'static str> {
        let previous = self.retained.get(topic).copied().unwrap_or(0);
        if len == 0 {
            self.retained.remove(topic);
            return Ok(());
        }
        if previous == 0 && self.retained.len() >= RETAINED_MAX_MESSAGES {
            return Err("retained_messages");
        }
        let total: usize = self.retained.values().sum();
        if total - previous + len > RETAINED_MAX_BYTES {
            return Err("retained_bytes");
        }
        self.retained.insert(topic.to_owned(), len);
        Ok(())
    }
}

fn client(c: u8) -> String {
    format!("c{}", c % CLIENTS)
}

fn short(s: &str) -> String {
    if s.len() <= 120 {
        s.to_owned()
    } else {
        format!("{}… ({} bytes, {} levels)", &s[..s.floor_char_boundary(100)], s.len(), s.split('/').count())
    }
}

fn run(input: Input) {
    let limits = if input.widest_limits {
        WIDEST_LIMITS
    } else {
        DEFAULT_LIMITS
    };
    let mut router = RouterOps::default();
    let retained = RetainedOps::new(RETAINED_MAX_MESSAGES, RETAINED_MAX_BYTES);
    let mut model = Model::default();
    let ops = input.ops;
    for op in ops {
        match op {
            Op::Subscribe {
                client: c,
                filter,
                qos,
                no_local,
                retain_as_published,
            } => {
                let filter = filter.render();
                if !filter_admitted(limits, &filter) {
                    continue;
                }
                let qos = qos % 3;
                router.subscribe(&filter, &client(c), qos, no_local, retain_as_published);
                model.subs.insert(
                    (client(c), filter),
                    Options {
                        qos,
                        no_local,
                        retain_as_published,
                    },
                );
            }
            Op::Unsubscribe { client: c, filter } => {
                let filter = filter.render();
                if !filter_admitted(limits, &filter) {
                    continue;
                }
                let existed = model.subs.remove(&(client(c), filter.clone())).is_some();
                assert_eq!(
                    router.unsubscribe(&filter, &client(c)),
                    existed,
                    "unsubscribe {} {}",
                    client(c),
                    short(&filter)
                );
            }
            Op::UnsubscribeExisting { index } => {
                let Some(key) = model.subs.keys().nth(usize::from(index) % model.subs.len().max(1))
                else {
                    continue;
                };
                let (c, filter) = key.clone();
                model.subs.remove(&(c.clone(), filter.clone()));
                assert!(
                    router.unsubscribe(&filter, &c),
                    "unsubscribe existing {c} {}",
                    short(&filter)
                );
            }
            Op::Match { topic } => check_match(limits, &mut router, &model, &topic.render()),
            Op::MatchLike { index, fill } => {
                let Some((_, filter)) =
                    model.subs.keys().nth(usize::from(index) % model.subs.len().max(1))
                else {
                    continue;
                };
                let fill = Path {
                    levels: vec![fill],
                    deep: None,
                }
                .render();
                let topic = filter
                    .split('/')
                    .map(|l| if l == "+" || l == "#" { fill.as_str() } else { l })
                    .collect::<Vec<_>>()
                    .join("/");
                check_match(limits, &mut router, &model, &topic);
            }
            Op::Retain { topic, payload_len } => {
                let topic = topic.render();
                if !name_admitted(limits, &topic) {
                    continue;
                }
                let len = usize::from(payload_len) * 3;
                assert_eq!(
                    retained.retain(&topic, &vec![b'x'; len]),
                    model.retain(&topic, len),
                    "retain {} ({len} bytes)",
                    short(&topic)
                );
            }
            Op::Retained { filter, limit } => {
                let filter = filter.render();
                if !filter_admitted(limits, &filter) {
                    continue;
                }
                let limit = usize::from(limit % 10);
                let expected: Vec<String> = model
                    .retained
                    .keys()
                    .filter(|topic| reference_matches(&filter, topic))
                    .take(limit)
                    .cloned()
                    .collect();
                assert_eq!(
                    retained.matching(&filter, limit),
                    expected,
                    "retained messages for {} (at most {limit})",
                    short(&filter)
                );
            }
        }
    }
}

fn check_match(limits: Limits, router: &mut RouterOps, model: &Model, topic: &str) {
    if !name_admitted(limits, topic) {
        return;
    }
    for (_, filter) in model.subs.keys() {
        let matches = reference_matches(filter, topic);
        assert_eq!(
            filter_matches(filter, topic),
            matches,
            "filter_matches({}, {})",
            short(filter),
            short(topic)
        );
        if matches {
            let prefix = literal_prefix(filter);
            assert!(
                topic.starts_with(prefix),
                "{} matches {} but does not start with its literal prefix {}",
                short(topic),
                short(filter),
                short(prefix)
            );
        }
    }
    assert_eq!(
        router.matched(topic),
        model.matched(topic),
        "sessions for {}",
        short(topic)
    );
}

fuzz_target!(|input: Input| {
    // Where the broker runs: a tokio worker thread, 2 MiB of stack.
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || run(input))
        .expect("spawn")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
});
