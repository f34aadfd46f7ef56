#!/usr/bin/env python3
"""Draws the rolling-upgrade scenario of benches/faults.sh as one SVG.

Usage: rolling_plot.py OUT_DIR OUTPUT.svg VARIANT...   (VARIANT: paced, unpaced)

Top: the terminals' reconnect times (connection lost to CONNACK on another
node), as a cumulative distribution per variant and fleet, from the load
tool's reports (rolling-upgrade-VARIANT-{uplink,downlink}.json, their
`reconnect` series). Below, one panel per variant: connects accepted per
second by each node over the roll, from its /metrics sampled every second
(rolling-upgrade-VARIANT-metrics.csv), with each node's SIGTERM and ready
marked (rolling-upgrade-VARIANT-events.csv). Standard library only, as
drain_plot.py: no plotting package to install.
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faults_summary import connect_rates, load, read_rows  # noqa: E402

WIDTH = 960
LEFT, RIGHT = 80, 210
CDF_H, RATE_H, GAP, TOP = 260, 220, 80, 50
NODE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c"]
CURVES = {  # (variant, fleet): colour, dash
    ("paced", "uplink"): ("#1f77b4", ""),
    ("paced", "downlink"): ("#1f77b4", "6,4"),
    ("unpaced", "uplink"): ("#d62728", ""),
    ("unpaced", "downlink"): ("#d62728", "6,4"),
}


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_step(span, ticks=5):
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def cdf_panel(svg, out, variants, top):
    plot_w = WIDTH - LEFT - RIGHT
    curves = []
    for variant in variants:
        for fleet in ("uplink", "downlink"):
            report = load(os.path.join(out, f"rolling-upgrade-{variant}-{fleet}.json")) or {}
            points = (report.get("distributions") or {}).get("reconnect") or []
            if points:
                n = report.get("reconnects", 0)
                curves.append((variant, fleet, n, [(max(us, 1) / 1000, pct) for us, pct in points if pct > 0]))
    svg.append(f'<text x="{LEFT}" y="{top - 12}" font-size="14">Reconnect time of the terminals '
               f'(connection lost → CONNACK on another node)</text>')
    if not curves:
        svg.append(f'<text x="{LEFT + 10}" y="{top + 30}">no reconnects recorded</text>')
        return
    lo = 10 ** math.floor(math.log10(min(p[0][0] for *_, p in curves)))
    hi = 10 ** math.ceil(math.log10(max(p[-1][0] for *_, p in curves)))
    hi = max(hi, lo * 10)

    def x(v):
        return LEFT + (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * plot_w

    def y(pct):
        return top + CDF_H - pct / 100 * CDF_H

    axes(svg, top, CDF_H, "reconnect time, ms (log scale)", "% of reconnects")
    decade = lo
    while decade <= hi * 1.0001:
        svg.append(f'<line x1="{x(decade):.1f}" y1="{top}" x2="{x(decade):.1f}" y2="{top + CDF_H}" stroke="#ddd"/>')
        svg.append(f'<text x="{x(decade):.1f}" y="{top + CDF_H + 16}" text-anchor="middle">{decade:g}</text>')
        decade *= 10
    for pct in (0, 25, 50, 75, 90, 100):
        svg.append(f'<line x1="{LEFT}" y1="{y(pct):.1f}" x2="{LEFT + plot_w}" y2="{y(pct):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{LEFT - 6}" y="{y(pct) + 4:.1f}" text-anchor="end">{pct}</text>')
    for i, (variant, fleet, n, points) in enumerate(curves):
        colour, dash = CURVES.get((variant, fleet), ("black", ""))
        # A step function: the percentile reached at each latency.
        path, prev = [], 0.0
        for v, pct in points:
            path += [f"{x(v):.1f},{y(prev):.1f}", f"{x(v):.1f},{y(pct):.1f}"]
            prev = pct
        svg.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="2"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        ly = top + 14 + i * 18
        lx = LEFT + plot_w + 10
        svg.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 24}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        svg.append(f'<text x="{lx + 30}" y="{ly}">{esc(variant)} {esc(fleet)} ({n:,})</text>')


def roll_rates(out, variant):
    """The variant's cluster info and {node: [(seconds since the first SIGTERM, connects/s)]}."""
    info = load(os.path.join(out, f"rolling-upgrade-{variant}-cluster.json"))
    if info is None:
        return None, {}
    start, end = info["roll_started_at_ms"], info["roll_ended_at_ms"] + 3000
    rates = connect_rates(read_rows(os.path.join(out, info["metrics"])))
    return info, {node: [((t - start) / 1000, r) for t, r, _ in points if start - 3000 <= t <= end]
                  for node, points in rates.items()}


def rate_panel(svg, out, variant, top, max_r):
    """Connects/s of each node during the roll; y up to max_r (shared by the panels)."""
    plot_w = WIDTH - LEFT - RIGHT
    info, series = roll_rates(out, variant)
    title = {"paced": "paced drain (drain_period 20 s, drain_rate 1000/s: the defaults)",
             "unpaced": "unpaced drain (drain_period 0 s: every connection closed at once)"}.get(variant, variant)
    svg.append(f'<text x="{LEFT}" y="{top - 12}" font-size="14">Connects accepted per second by each node, '
               f'{esc(title)}</text>')
    if info is None:
        svg.append(f'<text x="{LEFT + 10}" y="{top + 30}">not run</text>')
        return
    start = info["roll_started_at_ms"]
    max_t = (info["roll_ended_at_ms"] + 3000 - start) / 1000
    step = nice_step(max_r)
    max_r = math.ceil(max_r / step) * step
    t_step = nice_step(max_t, 8)

    def x(t):
        return LEFT + max(t, 0) / max_t * plot_w

    def y(r):
        return top + RATE_H - r / max_r * RATE_H

    axes(svg, top, RATE_H, "seconds since the first SIGTERM", "connects/s")
    r = 0
    while r <= max_r:
        svg.append(f'<line x1="{LEFT}" y1="{y(r):.1f}" x2="{LEFT + plot_w}" y2="{y(r):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{LEFT - 6}" y="{y(r) + 4:.1f}" text-anchor="end">{r:,.0f}</text>')
        r += step
    t = 0
    while t <= max_t:
        svg.append(f'<text x="{x(t):.1f}" y="{top + RATE_H + 16}" text-anchor="middle">{t:g}</text>')
        t += t_step
    for row in read_rows(os.path.join(out, info["events"])):
        node, event, when = int(row["node"]), row["event"], (int(row["ms"]) - start) / 1000
        if event in ("sigterm", "ready"):
            colour = NODE_COLOURS[node % len(NODE_COLOURS)]
            svg.append(f'<line x1="{x(when):.1f}" y1="{top}" x2="{x(when):.1f}" y2="{top + RATE_H}" '
                       f'stroke="{colour}" stroke-dasharray="{"3,3" if event == "sigterm" else "1,4"}"/>')
            label = f"TERM {node}" if event == "sigterm" else f"ready {node}"
            svg.append(f'<text x="{x(when) + 3:.1f}" y="{top + 12 + (0 if event == "sigterm" else 14)}" '
                       f'font-size="10" fill="{colour}">{label}</text>')
    for node in sorted(series):
        colour = NODE_COLOURS[node % len(NODE_COLOURS)]
        points = " ".join(f"{x(t):.1f},{y(r):.1f}" for t, r in series[node] if t >= 0)
        svg.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        ly = top + 14 + node * 18
        lx = LEFT + plot_w + 10
        svg.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 24}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>')
        svg.append(f'<text x="{lx + 30}" y="{ly}">faults-{node}</text>')


def axes(svg, top, height, x_label, y_label):
    plot_w = WIDTH - LEFT - RIGHT
    svg.append(f'<line x1="{LEFT}" y1="{top + height}" x2="{LEFT + plot_w}" y2="{top + height}" stroke="black"/>')
    svg.append(f'<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{top + height}" stroke="black"/>')
    svg.append(f'<text x="{LEFT + plot_w / 2}" y="{top + height + 34}" text-anchor="middle">{esc(x_label)}</text>')
    mid = top + height / 2
    svg.append(f'<text x="18" y="{mid}" text-anchor="middle" transform="rotate(-90 18 {mid})">{esc(y_label)}</text>')


def main():
    out, output, variants = sys.argv[1], sys.argv[2], sys.argv[3:] or ["paced"]
    height = TOP + CDF_H + len(variants) * (GAP + RATE_H) + 50
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="16">Rolling upgrade of 3 Herald nodes '
           f'under load (benches/faults.sh rolling-upgrade)</text>']
    cdf_panel(svg, out, variants, TOP + 10)
    top = TOP + CDF_H + GAP
    max_r = max([r for variant in variants for points in roll_rates(out, variant)[1].values()
                 for _, r in points] + [1])
    for variant in variants:
        rate_panel(svg, out, variant, top, max_r)
        top += RATE_H + GAP
    svg.append("</svg>")
    with open(output, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
