#!/usr/bin/env python3
"""Summarizes the fault suite's herald-loadtest reports (benches/faults.sh).

Usage: faults_summary.py OUT_DIR SCENARIO...   Prints a Markdown table, one row
per scenario and direction, and exits 1 if any acknowledged message was lost
(or a report is missing: a scenario that did not run proves nothing).

The cluster scenarios add what faults.sh recorded besides the load reports
(<scenario>-cluster.json, records dumped from Kafka, the takeover proxy's
report), printed after the table: for node-kill, when the killed node's
terminals had commands again; for takeover, whether node A closed every
half-open connection it lost (herald_cluster_takeovers_total and the proxy's
view) and whether the presence topic's latest record of every moved device
names node B. A takeover check that fails also makes the exit status 1. For
rolling-upgrade, per variant (paced, unpaced drain): the roll's steps (SIGTERM,
/readyz, exit, ready), the terminals' reconnect times (drop to CONNACK), and
the peak connects per second any node accepted during the roll, from the
nodes' /metrics sampled each second.
"""
import csv
import json
import os
import re
import statistics
import sys

# The reports each scenario writes (benches/faults.sh).
REPORTS = {
    "sigterm": ["sigterm-uplink", "sigterm-downlink"],
    "fanin-overload": ["fanin-overload", "fanin-overload-mosquitto"],
    "node-kill": ["node-kill-uplink", "node-kill-downlink"],
    "takeover": ["takeover-uplink", "takeover-downlink"],
}
# Other brokers' runs, shown for reference: their losses do not fail the suite.
REFERENCE = {"fanin-overload-mosquitto"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ms(report, series):
    p = (report.get("latency_us") or {}).get(series)
    return f"{p['p99'] / 1000:.0f}" if p else "–"


def outcomes(counts):
    return ", ".join(f"{k} {v}" for k, v in (counts or {}).items() if v)


# --- Kafka records dumped by faults.sh (dump_topic) --------------------------------------

def unescape(text):
    """The bytes of a value printed by Kafka's Bytes.toString (\\xNN for anything
    but printable ASCII other than the backslash)."""
    out, i = bytearray(), 0
    while i < len(text):
        if text.startswith("\\x", i):
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(ord(text[i]))
            i += 1
    return bytes(out)


def protobuf_fields(data):
    """{field number: last value} of a protobuf message: varints as ints,
    length-delimited fields as str (or bytes if not UTF-8)."""
    fields, i = {}, 0

    def varint():
        nonlocal i
        value, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number] = varint()
        elif wire == 2:
            length = varint()
            raw = data[i:i + length]
            i += length
            try:
                fields[number] = raw.decode()
            except UnicodeDecodeError:
                fields[number] = raw
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return fields


def records(path):
    """The decoded values of a dump, in the order read (per partition: as written)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        value = line.split("\t", 1)[-1]
        try:
            out.append(protobuf_fields(unescape(value)))
        except (ValueError, IndexError):
            pass
    return out


def terminal_number(client_id, prefix):
    rest = client_id[len(prefix):] if client_id.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def log_times_ms(lines):
    """Unix ms of each log line's leading timestamp (ANSI colours stripped)."""
    from datetime import datetime
    times = []
    for line in (lines or "").splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        match = re.search(r"(\d{4}-\d\d-\d\dT[\d:.]+)Z", line)
        if match:
            stamp = datetime.fromisoformat(match.group(1)[:26] + "+00:00")
            node = line.split(": ", 1)[0] if not line.startswith(match.group(1)) else ""
            text = line[match.end():].split(": ", 1)[-1].strip()
            times.append((round(stamp.timestamp() * 1000), f"{node}: {text}" if node else text))
    return times


def fatal_notes(scenario, info):
    """librdkafka's fatal errors in the nodes' logs since the scenario started: such a
    client is dead for good (the consumer behind it stops)."""
    return [f"{scenario}: **librdkafka fatal error** {text}"
            for when, text in log_times_ms(info.get("fatal")) if when >= info.get("started_at_ms", 0)]


def seconds(ms_value):
    return f"{ms_value / 1000:.1f} s"


# --- The cluster scenarios' checks ---------------------------------------------------------

def node_kill_notes(out):
    """Lines about node-kill; never fails the suite (its losses are in the table)."""
    info = load(os.path.join(out, "node-kill-cluster.json"))
    if info is None:
        return ["node-kill: no node-kill-cluster.json"], False
    killed_at, entries, entry = info["killed_at_ms"], info["nodes"], info["killed_entry"]
    prefix = info["downlink_clients"]
    notes = []
    receipts = records(os.path.join(out, info["receipts"])) or []
    delivered = [r for r in receipts if r.get(3) == 1 and isinstance(r.get(2), str)]
    # When each terminal of the killed node had a command delivered again after the kill.
    first_after = {}
    for r in delivered:
        number = terminal_number(r[2], prefix)
        if number is not None and number % entries == entry and r.get(6, 0) > killed_at:
            first_after[r[2]] = min(first_after.get(r[2], r[6]), r[6])
    report = load(os.path.join(out, "node-kill-downlink.json")) or {}
    terminals = report.get("clients", 0)
    of_killed = len([n for n in range(terminals) if n % entries == entry])
    rate = report.get("rate") or 0
    every = f"{terminals / rate:.1f} s" if rate else "?"
    if first_after:
        gaps = sorted(t - killed_at for t in first_after.values())
        notes.append(f"node-kill: {info['killed']} SIGKILLed; {len(first_after)} of its {of_killed} downlink "
                     f"terminals had commands again after {seconds(statistics.median(gaps))} (median), "
                     f"all of them within {seconds(gaps[-1])} (a terminal is due a command every {every})")
    else:
        notes.append(f"node-kill: no delivery receipt of the killed node's terminals after the kill "
                     f"({len(receipts)} receipts of the run read back)")
    # Commands held up by the kill: their first delivery came more than 1 s after production.
    waited = {}
    for r in delivered:
        waited[r.get(1)] = min(waited.get(r.get(1), r.get(5, 0)), r.get(5, 0))
    if waited:
        held = [w for w in waited.values() if w > 1000]
        notes.append(f"node-kill: {len(held)} of {len(waited)} commands were delivered more than 1 s after "
                     f"they were produced (longest {seconds(max(waited.values()))}; the dead node's downlink "
                     f"partitions move after session_timeout {info['session_timeout_s']} s, its inbox "
                     f"about one more later)")
    for when, text in log_times_ms(info.get("log")):
        if when >= killed_at:
            notes.append(f"node-kill: +{seconds(when - killed_at)} after the kill, {text}")
    notes += fatal_notes("node-kill", info)
    for node, metrics in sorted((info.get("survivors") or {}).items()):
        lag = metrics.pop("consumer_lag", None)
        notes.append(f"node-kill: {node} at the end: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
        if isinstance(lag, dict):
            partitions = []
            for series, value in lag.items():
                labels = dict(p.split("=", 1) for p in series.split(",") if "=" in p)
                partitions.append((labels.get("topic", "?"), labels.get("partition", "?"), value))
            notes.append(f"node-kill: {node}'s consumers, lag per assigned partition: " +
                         (", ".join(f"{t}[{p}] {v}" for t, p, v in sorted(partitions)) or "none assigned"))
    return notes, False


def takeover_notes(out):
    """Lines about takeover, and whether one of its checks failed."""
    info = load(os.path.join(out, "takeover-cluster.json"))
    proxy = load(os.path.join(out, (info or {}).get("proxy", "takeover-proxy.json")))
    if info is None or proxy is None:
        return ["takeover: **no takeover-cluster.json or takeover-proxy.json: not checked**"], True
    failed = False
    notes = []
    moved = proxy["open_at_cut"]
    expected = sum(len([n for n in range(info["terminals"]) if n % info["nodes"] == info["from_entry"]])
                   for _ in info["clients"])
    if moved != expected:
        notes.append(f"takeover: {moved} connections open through the proxy at the cut, "
                     f"{expected} expected (terminals on node A)" + (" **(none moved)**" if not moved else ""))
        failed |= not moved
    try:
        takeovers = int(info["takeovers_after"]) - int(info["takeovers_before"])
    except (TypeError, ValueError):
        takeovers = None
    ok = takeovers == moved
    failed |= not ok
    notes.append(f"takeover: {moved} terminals moved from {info['from']} to {info['to']}; "
                 f"herald_cluster_takeovers_total on {info['from']} "
                 f"+{takeovers if takeovers is not None else '?'}" + ("" if ok else " **(not equal)**"))
    closed = proxy["closed_after_ms"]
    ok = proxy["closed_by_node"] == moved
    failed |= not ok
    timing = (f" ({statistics.median(closed):.0f} ms after the cut at the median, {closed[-1]} ms at most)"
              if closed else "")
    notes.append(f"takeover: {info['from']} closed {proxy['closed_by_node']} of the {moved} half-open "
                 f"connections{timing}; it sent {proxy['bytes_from_node_after_cut']} bytes into them "
                 f"after the cut" + ("" if ok else " **(not all closed)**"))
    notes += fatal_notes("takeover", info)
    presence = records(os.path.join(out, info["presence"]))
    if presence is None:
        notes.append("takeover: **presence topic not read**")
        return notes, True
    latest = {}
    for r in presence:
        if isinstance(r.get(1), str):
            latest[r[1]] = r
    wrong = []
    checked = 0
    for prefix in info["clients"]:
        for n in range(info["terminals"]):
            if n % info["nodes"] != info["from_entry"]:
                continue
            checked += 1
            device = f"{prefix}{n}"
            r = latest.get(device)
            if r is None or r.get(4, 0) < info["started_at_ms"]:
                wrong.append(f"{device}: no record of this run")
            elif r.get(6) != info["to"]:
                wrong.append(f"{device}: {r.get(6)} (online {bool(r.get(2))}, reason {r.get(3, 0)})")
    failed |= bool(wrong)
    notes.append(f"takeover: presence topic, latest record of each moved device: {checked - len(wrong)} of "
                 f"{checked} name {info['to']}" + (f" **(not: {'; '.join(wrong[:5])})**" if wrong else ""))
    return notes, failed


# --- rolling-upgrade ------------------------------------------------------------------------

ROLL_VARIANTS = ("paced", "unpaced")


def roll_variants(out):
    """The variants of rolling-upgrade that ran (the paced one always counts: its
    reports missing fail the suite)."""
    ran = [v for v in ROLL_VARIANTS if os.path.exists(os.path.join(out, f"rolling-upgrade-{v}-cluster.json"))]
    return ran if "paced" in ran else ["paced"] + ran


def read_rows(path):
    try:
        with open(path) as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def connect_rates(samples):
    """{node: [(unix ms at the interval's end, accepted/s, rate_limited in it)]} from the
    sampler's rows (rolling-upgrade-*-metrics.csv). A counter that went down is a
    restarted node: its new value counts from 0."""
    by_node = {}
    for row in samples:
        by_node.setdefault(int(row["node"]), []).append(
            (int(row["ms"]), int(row["accepted"]), int(row["rate_limited"])))
    rates = {}
    for node, rows in by_node.items():
        rows.sort()
        out = rates.setdefault(node, [])
        for (t0, a0, l0), (t1, a1, l1) in zip(rows, rows[1:]):
            dt = max(t1 - t0, 1) / 1000
            accepted = a1 - a0 if a1 >= a0 else a1
            limited = l1 - l0 if l1 >= l0 else l1
            out.append((t1, accepted / dt, limited))
    return rates


def drain_settings(info):
    """"drain_period 20s, drain_rate 1000" from the nodes' environment."""
    env = dict(pair.split("=", 1) for pair in info.get("node_env", "").split() if "=" in pair)
    return ", ".join(f"{key.lower()} {env[f'HERALD_BROKER__{key}']}" for key in ("DRAIN_PERIOD", "DRAIN_RATE")
                     if f"HERALD_BROKER__{key}" in env)


def ms_of(latency_us):
    return f"{latency_us / 1000:,.0f}"


def rolling_notes(out):
    """Lines about rolling-upgrade, and whether one of its checks failed."""
    notes, failed = [], False
    for variant in roll_variants(out):
        name = f"rolling-upgrade-{variant}"
        info = load(os.path.join(out, f"{name}-cluster.json"))
        if info is None:
            notes.append(f"{name}: **no {name}-cluster.json: the roll did not finish**")
            failed = True
            continue
        start = info["roll_started_at_ms"]
        events = read_rows(os.path.join(out, info["events"]))
        steps = {}
        for row in events:
            steps.setdefault(int(row["node"]), []).append((int(row["ms"]), row["event"]))
        for node in info["order"]:
            at = {}
            readyz = "?"
            for when, event in steps.get(node, []):
                if event.startswith("readyz "):
                    readyz, at["readyz"] = event[len("readyz "):], when
                else:
                    at[event] = when
            if "sigterm" not in at:
                notes.append(f"{name}: node {node} **not rolled**")
                failed = True
                continue
            term = at["sigterm"]

            def after(event, since=term):
                return seconds(at[event] - since) if event in at else "?"

            ok = readyz.startswith("503")
            notes.append(f"{name}: faults-{node} SIGTERM at +{seconds(term - start)}: /readyz {readyz} after "
                         f"{after('readyz')}" + ("" if ok else " **(not 503)**") + f", exited after {after('exited')}, "
                         f"ready again {after('ready', at.get('exited', term))} after its start")
        took = info["roll_ended_at_ms"] - start
        under_load = info["roll_ended_at_ms"] <= info["started_at_ms"] + info["load_seconds"] * 1000
        notes.append(f"{name}: the roll (3 nodes, minReadySeconds {info['min_ready_s']} s) took {seconds(took)}"
                     + ("" if under_load else f" **and outlasted the {info['load_seconds']} s of load**"))
        total = 0
        for direction in ("uplink", "downlink"):
            report = load(os.path.join(out, f"{name}-{direction}.json")) or {}
            r = (report.get("latency_us") or {}).get("reconnect")
            total += report.get("reconnects", 0)
            if r:
                notes.append(f"{name}: {direction} fleet ({report.get('clients')} terminals): {report.get('reconnects')} "
                             f"reconnects, drop to CONNACK p50 {ms_of(r['p50'])} ms, p90 {ms_of(r['p90'])} ms, "
                             f"p99 {ms_of(r['p99'])} ms, max {ms_of(r['max'])} ms; "
                             f"{report.get('reconnect_failures', 0)} failed attempts")
        rates = connect_rates(read_rows(os.path.join(out, info["metrics"])))
        window = [(rate, limited, node, t) for node, series in rates.items() for t, rate, limited in series
                  if start < t <= info["roll_ended_at_ms"] + 2000]
        if window:
            rate, _, node, t = max(window)
            limited = sum(w[1] for w in window)
            notes.append(f"{name}: peak connects accepted by a surviving node: **{rate:,.0f}/s** (faults-{node}, "
                         f"+{seconds(t - start)}); {drain_settings(info)}"
                         + (f"; {limited:,} connects refused by the admission rate limit" if limited else ""))
        else:
            notes.append(f"{name}: **no /metrics samples during the roll**")
        waiting = [(int(row.get("uplinks_inflight") or 0), int(row["node"]), int(row["ms"]))
                   for row in read_rows(os.path.join(out, info["metrics"]))
                   if row.get("uplinks_inflight") and int(row["ms"]) > info["started_at_ms"]]
        if waiting:
            most, node, t = max(waiting)
            notes.append(f"{name}: most uplinks waiting for Kafka's acknowledgement on one node: {most:,} "
                         f"(faults-{node}, +{seconds(t - start)}; a Kafka that stalls shows here, and in the p99s)")
        notes += fatal_notes(name, info)
    return notes, failed


CHECKS = {"node-kill": node_kill_notes, "takeover": takeover_notes, "rolling-upgrade": rolling_notes}


def main():
    out, scenarios = sys.argv[1], sys.argv[2:]
    failed = False
    print("| scenario | direction | sent / produced | acknowledged / delivered | in Kafka / receipted "
          "| **acked-but-lost / lost** | duplicates | never acked | reconnects | p99 ack ms (downlink: delivery) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario in scenarios:
        names = REPORTS.get(scenario, [scenario])
        if scenario == "rolling-upgrade":
            names = [f"rolling-upgrade-{v}-{d}" for v in roll_variants(out) for d in ("uplink", "downlink")]
        for name in names:
            report = load(os.path.join(out, f"{name}.json"))
            if report is None and name in REFERENCE:
                continue
            if report is None:
                print(f"| {name} | – | no report (see {out}/{name}.err) | | | **?** | | | | |")
                failed = True
                continue
            reconnects = report.get("reconnects", "–")
            if "uplink" in report and report["uplink"]:
                u = report["uplink"]
                lost = u.get("acked_but_lost", 0)
                failed |= lost != 0
                print(f"| {name} | uplink | {u['sent']} | {u['acked']} | {u['in_kafka']} | **{lost}** "
                      f"| {u['duplicates']} | {u['never_acked']} | {reconnects} | {ms(report, 'ack')} |")
            if "downlink" in report and report["downlink"]:
                d = report["downlink"]
                lost = d.get("lost", 0)
                failed |= lost != 0
                print(f"| {name} | downlink | {d['produced']} | {d['delivered']} | {d['receipted']} "
                      f"({outcomes(d.get('receipted_by_outcome'))}) "
                      f"| **{lost}** | {d['duplicated']} | – | {reconnects} | {ms(report, 'e2e')} |")
                for kind in ("stalled", "slow"):
                    part = d.get(kind)
                    if part:
                        print(f"| {name} | → {part['terminals']} {kind} terminals | {part['produced']} "
                              f"| {part['delivered']} | {part['receipted']} "
                              f"({outcomes(part.get('receipted_by_outcome'))}) | **{part['lost']}** "
                              f"| {part['duplicated']} | – | – | – |")
            if "fanin" in report and report["fanin"]:
                f = report["fanin"]
                lost = f.get("acked_but_lost", 0)
                failed |= lost != 0 and name not in REFERENCE
                print(f"| {name} | MQTT fan-in | {f['sent']} | {f['acked']} | {f['received']} (subscriber) "
                      f"| **{lost}** | {f['duplicates']} | {f['never_acked']} | {reconnects} | {ms(report, 'ack')} |")
                if f.get("stalled"):
                    print(f"| {name} | → {f['stalled']} stalled subscribers | | | | | | | "
                          f"{f.get('stalled_disconnected', 0)} disconnected by Herald | |")
    print()
    checks_failed = False
    for scenario in scenarios:
        if scenario in CHECKS:
            notes, check_failed = CHECKS[scenario](out)
            checks_failed |= check_failed
            for note in notes:
                print(f"- {note}")
    if any(scenario in CHECKS for scenario in scenarios):
        print()
    print("acknowledged-but-lost: " + ("NOT ZERO, or a scenario did not run" if failed else "0 in every scenario"))
    if checks_failed:
        print("cluster checks: FAILED (see above)")
    sys.exit(1 if failed or checks_failed else 0)


if __name__ == "__main__":
    main()
