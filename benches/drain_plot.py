#!/usr/bin/env python3
"""Draws the connection curve of a draining Herald node as an SVG.

Usage: drain_plot.py CSV OUTPUT.svg TITLE
CSV: `seconds,connections` samples of `herald_connections` from the moment
SIGTERM was sent (benches/faults.sh, scenario sigterm). Standard library
only: a line chart needs no plotting package.
"""
import csv
import sys

WIDTH, HEIGHT = 800, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50


def main():
    path, output, title = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(path) as f:
        points = [(float(r["seconds"]), int(r["connections"])) for r in csv.DictReader(f)]
    if not points:
        sys.exit(f"{path}: no samples")
    max_t = max(max(t for t, _ in points), 1.0)
    max_n = max(max(n for _, n in points), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t):
        return LEFT + t / max_t * plot_w

    def y(n):
        return TOP + plot_h - n / max_n * plot_h

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
    ]
    for i in range(6):
        t = max_t * i / 5
        n = round(max_n * i / 5)
        svg.append(f'<text x="{x(t):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{t:.1f}</text>')
        svg.append(f'<text x="{LEFT - 8}" y="{y(n) + 4:.1f}" text-anchor="end">{n}</text>')
        svg.append(f'<line x1="{LEFT}" y1="{y(n):.1f}" x2="{LEFT + plot_w}" y2="{y(n):.1f}" stroke="#ddd"/>')
    svg.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">'
               f'seconds after SIGTERM</text>')
    svg.append(f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {TOP + plot_h / 2})">connections on the draining node</text>')
    line = " ".join(f"{x(t):.1f},{y(n):.1f}" for t, n in points)
    svg.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    svg.append("</svg>")
    with open(output, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
