#!/usr/bin/env python3
"""ncu_summary.py: per-kernel GPU time from an Nsight Compute CSV (ncu --csv --metrics gpu__time_duration.sum).

Usage: ncu_summary.py FILE.csv [STEPS]   (STEPS: decode steps the profiled launches cover, for per-step numbers)
Groups launches by kernel name (template arguments kept), prints count, total and mean microseconds.
"""
import csv
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    steps = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # skip ncu's own log lines
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        ns = v * {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit, 1)
        rows.append((r["Kernel Name"], r.get("Grid Size", ""), ns))
    agg = defaultdict(lambda: [0, 0.0, set()])
    for name, grid, ns in rows:
        a = agg[name]
        a[0] += 1
        a[1] += ns
        a[2].add(grid)
    total = sum(a[1] for a in agg.values())
    print(f"{len(rows)} launches, {total / 1e3:.1f} us of GPU time ({total / 1e3 / steps:.1f} us per step over {steps:g})")
    for name, (n, ns, grids) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"{ns / 1e3 / steps:9.1f} us/step {100 * ns / total:5.1f}%  {n / steps:6.1f} x {ns / n / 1e3:7.2f} us  "
              f"{name[:80]}  grids {sorted(grids)[:3]}")


if __name__ == "__main__":
    main()
