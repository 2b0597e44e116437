"""Plot bench/results/latest.json to docs/img/benchmark.png and print the Markdown tables.

python -m bench.plot [results.json] [--before before.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "docs" / "img" / "benchmark.png"
COLOURS = {
    "direct fake": "#9e9e9e",
    "service /ai-process": "#1565c0",
    "service /ai-process local": "#90caf9",
    "httpx passthrough": "#43a047",
    "aiohttp passthrough": "#fb8c00",
    "LiteLLM proxy": "#8e24aa",
}


def plot(results: dict[str, Any], out: Path = IMAGE) -> None:
    table = results["overhead"]
    names = [name for name in COLOURS if name in table]
    concurrencies = sorted({int(c) for name in names for c in table[name]})
    fig, (rps_axis, p99_axis) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        xs = [position + index * width for position in range(len(concurrencies))]
        rps = [table[name][str(c)]["rps"] for c in concurrencies]
        p99 = [table[name][str(c)]["p99_ms"] for c in concurrencies]
        rps_axis.bar(xs, rps, width, label=name, color=COLOURS[name])
        p99_axis.bar(xs, p99, width, label=name, color=COLOURS[name])
    for axis, title, unit in ((rps_axis, "Throughput", "requests/s"), (p99_axis, "p99 latency", "ms (log)")):
        axis.set_xticks([p + width * (len(names) - 1) / 2 for p in range(len(concurrencies))])
        axis.set_xticklabels([f"concurrency {c}" for c in concurrencies])
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    rps_axis.set_yscale("log")
    p99_axis.set_yscale("log")
    rps_axis.legend(fontsize=8)
    machine = results["machine"]
    fig.suptitle(
        f"/ai-process vs passthroughs and LiteLLM (fake upstream, 0 ms) - {machine['cores']} cores, "
        f"{machine['cpu_model']}, servers pinned to one core",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def markdown(results: dict[str, Any]) -> str:
    table = results["overhead"]
    lines = ["| Target | Concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name in (n for n in COLOURS if n in table):
        for concurrency, point in table[name].items():
            lines.append(
                f"| {name} | {concurrency} | {point['rps']:.0f} | {point['p50_ms']:.1f} | {point['p99_ms']:.1f} "
                f"| {point['errors']} |"
            )
    service = table.get("service /ai-process", {})
    lines += ["", "| Ratio (service / other), same concurrency | 1 | 16 | 64 |", "|---|---:|---:|---:|"]
    for mine in ("service /ai-process", "service /ai-process local"):
        for other in ("httpx passthrough", "aiohttp passthrough", "LiteLLM proxy"):
            if mine in table and other in table:
                cells = [f"{table[mine][c]['rps'] / table[other][c]['rps']:.2f}x" for c in ("1", "16", "64")]
                lines.append(
                    f"| {mine.removeprefix('service /ai-process').strip() or 'claude'} vs {other} | "
                    + " | ".join(cells)
                    + " |"
                )
    if "direct fake" in table and "16" in service:
        direct = table["direct fake"]["16"]
        lines += [
            "",
            "Overhead over the direct call at concurrency 16: "
            f"p50 {service['16']['p50_ms'] - direct['p50_ms']:.1f} ms, "
            f"p99 {service['16']['p99_ms'] - direct['p99_ms']:.1f} ms.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="?", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--out", type=Path, default=IMAGE)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    if "overhead" in results:
        plot(results, args.out)
        print(markdown(results))
    for key in ("startup", "event_loop", "briefing", "webhooks"):
        if key in results:
            print(f"\n{key}: {json.dumps(results[key], indent=1)}")


if __name__ == "__main__":
    main()
