#!/usr/bin/env python3
"""Summarizes the fault suite's herald-loadtest reports (benches/faults.sh).

Usage: faults_summary.py OUT_DIR SCENARIO...   Prints a Markdown table, one row
per scenario and direction, and exits 1 if any acknowledged message was lost
(or a report is missing: a scenario that did not run proves nothing).
"""
import json
import os
import sys

# The reports each scenario writes (benches/faults.sh).
REPORTS = {
    "sigterm": ["sigterm-uplink", "sigterm-downlink"],
    "fanin-overload": ["fanin-overload", "fanin-overload-mosquitto"],
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


def main():
    out, scenarios = sys.argv[1], sys.argv[2:]
    failed = False
    print("| scenario | direction | sent / produced | acknowledged / delivered | in Kafka / receipted "
          "| **acked-but-lost / lost** | duplicates | never acked | reconnects | p99 ack ms (downlink: delivery) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario in scenarios:
        for name in REPORTS.get(scenario, [scenario]):
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
                      f"| **{lost}** | {d['duplicated']} | – | {reconnects} | {ms(report, 'e2e')} |")
                for kind in ("stalled", "slow"):
                    part = d.get(kind)
                    if part:
                        outcomes = ", ".join(f"{k} {v}" for k, v in
                                             (part.get("receipted_by_outcome") or {}).items() if v)
                        print(f"| {name} | → {part['terminals']} {kind} terminals | {part['produced']} "
                              f"| {part['delivered']} | {part['receipted']} ({outcomes}) | **{part['lost']}** "
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
    print("acknowledged-but-lost: " + ("NOT ZERO, or a scenario did not run" if failed else "0 in every scenario"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
