"""Compare implementations from a pytest-benchmark JSON file.

Usage:
    pytest benchmarks/ --benchmark-only --benchmark-json=out.json
    python benchmarks/compare.py out.json [--baseline pyengine] [--stat median|min|mean]

Prints one row per benchmark group: the median time (ms) of each
implementation (the ``impl`` parameter) and, after each peer, the ratio
peer_median / baseline_median, so a ratio above 1 means the baseline
(pyengine by default) is faster. The last row is the geometric mean of each
ratio column. ``--stat min`` compares minima instead, steadier on a busy machine.
When benchmarks record their floating-point operations (``extra_info["flops"]``,
as benchmarks/test_gemm.py does), a second table gives each implementation's
GFLOP/s at that statistic.
"""

from __future__ import annotations

import argparse
import json
import math


def load_stats(path, stat="median"):
    """{group: {impl: seconds}} for one statistic, and {group: threads}, in file order."""
    with open(path) as f:
        data = json.load(f)
    medians, threads = {}, {}
    for bench in data["benchmarks"]:
        group = bench["group"] or bench["name"]
        impl = bench["params"]["impl"]
        medians.setdefault(group, {})[impl] = bench["stats"][stat]
        threads[group] = bench.get("extra_info", {}).get("threads", "?")
    return medians, threads


def load_flops(path):
    """{group: flops per call} for the groups whose benchmarks record extra_info["flops"]."""
    with open(path) as f:
        data = json.load(f)
    flops = {}
    for bench in data["benchmarks"]:
        value = bench.get("extra_info", {}).get("flops")
        if value:
            flops[bench["group"] or bench["name"]] = value
    return flops


def format_gflops(medians, threads, flops, baseline, stat="median"):
    """One row per group with flops: GFLOP/s of each implementation at the statistic."""
    impls = impl_order({g: medians[g] for g in flops}, baseline)
    label = f"group (GFLOP/s at the {stat})"
    width = max(len(label), *(len(g) for g in flops))
    header = f"{label:<{width}}  thr"
    header += "".join(f"  {impl:>9}" for impl in impls)
    lines = [header, "-" * len(header)]
    for group in flops:
        line = f"{group:<{width}}  {threads[group]!s:>3}"
        for impl in impls:
            seconds = medians[group].get(impl)
            line += f"  {'-' if not seconds else f'{flops[group] / seconds / 1e9:.1f}':>9}"
        lines.append(line)
    return "\n".join(lines)


def impl_order(medians, baseline):
    seen = dict.fromkeys(impl for row in medians.values() for impl in row)
    return [baseline] + [impl for impl in seen if impl != baseline]


def ratio(row, impl, baseline):
    if impl in row and row.get(baseline):
        return row[impl] / row[baseline]
    return None


def format_table(medians, threads, baseline):
    impls = impl_order(medians, baseline)
    peers = impls[1:]
    width = max(len(g) for g in medians)
    header = f"{'group':<{width}}  thr  {baseline + ' ms':>12}"
    header += "".join(f"  {peer + ' ms':>11}  {'ratio':>6}" for peer in peers)
    lines = [header, "-" * len(header)]
    ratios = {peer: [] for peer in peers}
    for group, row in medians.items():
        line = f"{group:<{width}}  {threads[group]!s:>3}  {_ms(row.get(baseline)):>12}"
        for peer in peers:
            r = ratio(row, peer, baseline)
            if r is not None:
                ratios[peer].append(r)
            line += f"  {_ms(row.get(peer)):>11}  {_x(r):>6}"
        lines.append(line)
    lines.append("-" * len(header))
    footer = f"{'geometric mean of ratios':<{width}}  {'':>3}  {'':>12}"
    footer += "".join(f"  {'':>11}  {_x(_geomean(ratios[peer])):>6}" for peer in peers)
    lines.append(footer)
    return "\n".join(lines)


def _ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _x(r):
    return "-" if r is None else f"{r:.2f}x"


def _geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    parser.add_argument("--baseline", default="pyengine", help="impl the ratios divide by")
    parser.add_argument("--stat", default="median", choices=("median", "min", "mean"),
                        help="statistic compared (default: median)")
    args = parser.parse_args(argv)
    medians, threads = load_stats(args.json, args.stat)
    print(format_table(medians, threads, args.baseline))
    flops = load_flops(args.json)
    if flops:
        print()
        print(format_gflops(medians, threads, flops, args.baseline, args.stat))


if __name__ == "__main__":
    main()
