#!/usr/bin/env python3
"""Turns bench/run.sh's JSON results into one table (printed and bench/results/table.md) and a
latency-versus-throughput plot (bench/results/latency.svg). Standard library only."""

import argparse
import math
import json
import pathlib


def load(out):
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    for p in out.glob("*.server"):
        if p.stem in runs:
            server = json.loads(p.read_text())
            runs[p.stem]["server_p99_us"] = server.get("server_p99_us")
            if server.get("script_calls"):
                runs[p.stem]["redis"] = server
    return runs


def cell(value):
    return "—" if value is None else str(value)


def table(runs, out):
    # Each generator is compared with the no-op server measured by the same generator.
    noop = max((r["rps"] for n, r in runs.items() if n in ("noop", "noop-again")), default=0)
    noop_h2load = runs.get("noop-h2load", {}).get("rps") or 0
    # Redis runs are compared with the ceiling of the same number of descriptors.
    ceilings = {r["descriptors"]: r["rps"] for n, r in runs.items() if n.startswith("redis-ceiling")}
    rows = []
    for name, r in runs.items():
        if name.startswith("pair-"):
            continue  # summarised below the table
        share = ""
        rate = r.get("target_rate")
        if name.startswith("noop") or name.startswith("redis-ceiling"):
            pass
        elif rate:
            same = runs.get(f"noop-open-{rate}")
            if same:
                share = f"no-op at this rate: p99 {same['p99_us']} µs"
            if r.get("server_p99_us"):
                share += f"; inside Floodgate: p99 ≤ {r['server_p99_us']} µs"
        elif r.get("mode") == "h2load":
            if noop_h2load:
                share = f"{100 * r['rps'] / noop_h2load:.0f} % of no-op (h2load)"
        elif noop:
            share = f"{100 * r['rps'] / noop:.0f} % of no-op"
        ceiling = ceilings.get(r["descriptors"])
        if ceiling and name.startswith("redis-") and "ceiling" not in name and not rate:
            share += f", {100 * r['rps'] / ceiling:.0f} % of Redis ceiling"
        if r.get("mode") == "h2load":
            load = f"h2load, {r['concurrency']} in flight (mean {r['mean_us']} µs)"
        elif rate:
            load = f"{rate}/s open"
        else:
            load = f"closed, {r['concurrency']} in flight"
        redis = r.get("redis")
        calls = f"{redis['calls_per_decision']:.2f} / {redis['calls_per_decision'] * redis['trips_per_call']:.3f}" if redis else ""
        waits = r.get("wait_us_per_request", {})
        cpu = ", ".join(
            f"{k} {v:.0f}" + (f" / {waits[k]:.0f}" if k in waits else "")
            for k, v in sorted(r.get("cpu_us_per_request", {}).items())
        )
        rows.append(
            f"| {name} | {load} | {r['descriptors']} | {r['rps']:,.0f} | {cell(r['p50_us'])} | {cell(r['p99_us'])} | "
            f"{cell(r['p999_us'])} | {cell(r['max_us'])} | {r['ok']:,} / {r['over_limit']:,} / {r['errors']:,} | {cpu} | {calls} | {share.strip(', ')} |"
        )
    lines = [
        "| run | load | descriptors | decisions/s | p50 µs | p99 µs | p99.9 µs | max µs | OK / OVER / errors | CPU / waiting for a core, µs per decision | EVALSHA / round trips per decision | compared with |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    for kind, label in (
        ("memory", "memory store"),
        ("redis", "Redis store (1 descriptor)"),
        ("redis3", "Redis store (3 descriptors)"),
        ("sqlite", "SQLite store (1 descriptor)"),
    ):
        pairs, cpu_pairs = [], []
        for name, noop_run in runs.items():
            if not name.startswith("pair-noop-"):
                continue
            other = runs.get(f"pair-{kind}-{name[len('pair-noop-'):]}")
            if not other:
                continue
            pairs.append(other["rps"] / noop_run["rps"])
            noop_cpu = noop_run.get("cpu_us_per_request", {}).get("server")
            if noop_cpu:
                cpu_pairs.append(other["cpu_us_per_request"]["server"] / noop_cpu)
        pairs.sort()
        cpu_pairs.sort()
        if pairs:
            lines.append("")
            lines.append(
                f"{label} / no-op, paired rounds: median {100 * pairs[len(pairs) // 2]:.0f} % "
                f"(rounds: {', '.join(f'{100 * p:.0f} %' for p in pairs)})"
            )
        if cpu_pairs:
            lines.append(
                f"{label} / no-op, server CPU per decision, paired rounds: median "
                f"{100 * cpu_pairs[len(cpu_pairs) // 2]:.0f} % (rounds: {', '.join(f'{100 * p:.0f} %' for p in cpu_pairs)})"
            )
    # The SQLite store against the memory store, round by round (issue 23's target: half).
    shares = sorted(
        run["rps"] / runs[name.replace("pair-sqlite-", "pair-memory-")]["rps"]
        for name, run in runs.items()
        if name.startswith("pair-sqlite-") and name.replace("pair-sqlite-", "pair-memory-") in runs
    )
    if shares:
        lines.append("")
        lines.append(
            f"SQLite store / memory store, paired rounds: median {100 * shares[len(shares) // 2]:.0f} % "
            f"(rounds: {', '.join(f'{100 * p:.0f} %' for p in shares)})"
        )
    memory = out / "memory-per-key.txt"
    if memory.exists():
        lines.append("")
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
    # p99 spans microseconds to (past saturation) hundreds of milliseconds: a log scale.
    low = 0.1
    top = max(max(y for pts in series.values() for _, y in pts) * 1.5, 1.0)
    decades = math.log10(top / low)
    sx = lambda x: pad + (width - 2 * pad) * x / max_x
    sy = lambda y: height - pad - (height - 2 * pad) * math.log10(max(y, low) / low) / decades
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">p99 latency versus throughput (open loop)</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">decisions per second</text>',
        f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">p99 (ms, log scale)</text>',
    ]
    for i in range(5):
        x = max_x * i / 4
        parts.append(f'<text x="{sx(x)}" y="{height - pad + 15}" text-anchor="middle">{x:,.0f}</text>')
    y = low
    while y <= top:
        parts.append(f'<text x="{pad - 5}" y="{sy(y) + 4}" text-anchor="end">{y:g}</text>')
        parts.append(f'<line x1="{pad}" y1="{sy(y)}" x2="{width - pad}" y2="{sy(y)}" stroke="#ddd"/>')
        y *= 10
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
