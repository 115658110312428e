#!/usr/bin/env python3
"""Turns bench/run.sh's JSON results into one table (printed and bench/results/table.md) and a
latency-versus-throughput plot (bench/results/latency.svg). Standard library only."""

import argparse
import json
import pathlib


def load(out):
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    for p in out.glob("*.redis"):
        if p.stem in runs:
            runs[p.stem]["redis"] = json.loads(p.read_text())
    return runs


def table(runs, out):
    noops = [r["rps"] for name, r in runs.items() if name.startswith("noop")]
    noop = max(noops) if noops else 0
    ceiling = runs.get("redis-ceiling", {}).get("rps") or 0
    rows = []
    for name, r in runs.items():
        share = ""
        if noop and not name.startswith("noop") and not name.startswith("redis-ceiling"):
            share = f"{100 * r['rps'] / noop:.0f} % of no-op"
        if ceiling and name.startswith("redis-") and "ceiling" not in name and "open" not in name:
            share += f", {100 * r['rps'] / ceiling:.0f} % of Redis ceiling"
        rate = f"{r['target_rate']}/s open" if r.get("target_rate") else f"closed, {r['concurrency']} in flight"
        redis = r.get("redis")
        calls = f"{redis['calls_per_decision']:.2f} / {redis['calls_per_decision'] * redis['trips_per_call']:.3f}" if redis else ""
        rows.append(
            f"| {name} | {rate} | {r['descriptors']} | {r['rps']:,.0f} | {r['p50_us']} | {r['p99_us']} | "
            f"{r['p999_us']} | {r['max_us']} | {r['ok']:,} / {r['over_limit']:,} / {r['errors']:,} | {calls} | {share.strip(', ')} |"
        )
    lines = [
        "| run | load | descriptors | decisions/s | p50 µs | p99 µs | p99.9 µs | max µs | OK / OVER / errors | EVALSHA / round trips per decision | share |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    memory = out / "memory-per-key.txt"
    if memory.exists():
        lines.append(memory.read_text().strip())
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)


def plot(runs, out):
    series = {}
    for name, r in runs.items():
        if "-open-" in name:
            store = name.split("-open-")[0]
            series.setdefault(store, []).append((r["rps"], r["p99_us"] / 1000.0))
    if not series:
        return
    width, height, pad = 640, 400, 60
    max_x = max(x for pts in series.values() for x, _ in pts) * 1.1
    max_y = max(y for pts in series.values() for _, y in pts) * 1.2 or 1
    sx = lambda x: pad + (width - 2 * pad) * x / max_x
    sy = lambda y: height - pad - (height - 2 * pad) * y / max_y
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">p99 latency versus throughput (open loop)</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">decisions per second</text>',
        f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">p99 (ms)</text>',
    ]
    for i in range(5):
        x, y = max_x * i / 4, max_y * i / 4
        parts.append(f'<text x="{sx(x)}" y="{height - pad + 15}" text-anchor="middle">{x:,.0f}</text>')
        parts.append(f'<text x="{pad - 5}" y="{sy(y) + 4}" text-anchor="end">{y:.2f}</text>')
    for i, (store, pts) in enumerate(sorted(series.items())):
        pts.sort()
        colour = colours[i % len(colours)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{width - pad - 80}" y="{pad + 15 * i}" fill="{colour}">{store}</text>')
    parts.append("</svg>")
    (out / "latency.svg").write_text("\n".join(parts) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=pathlib.Path)
    args = parser.parse_args()
    runs = load(args.out)
    table(runs, args.out)
    plot(runs, args.out)


if __name__ == "__main__":
    main()
