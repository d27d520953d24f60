#!/usr/bin/env python3
"""plot_concurrency.py: decode throughput against concurrency, as an SVG, from `loom bench ... --json` files.

    python3 bench/plot_concurrency.py -o bench/concurrency.svg results/*.json
    python3 bench/plot_concurrency.py -o plot.svg all_results.json      # a JSON list of results works too

Each result becomes one point of the series (device, benchmark):
  - `loom bench latency`    x = batch_size,                 y = decode_tokens_per_s (batch / decode step time)
  - `loom bench throughput` x = concurrency (sequences run together), y = output_tokens_per_second
  - `loom bench serve`      x = max_concurrency,            y = output_throughput
so CPU and CUDA runs of the same benchmark sit side by side. The x axis is log2 (1, 2, 4, ... 64 by default,
wider if the data is). Python 3 standard library only: the SVG is written by hand.
"""

import argparse
import json
import math
import sys
from xml.sax.saxutils import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
MARKERS = ["circle", "square", "diamond", "triangle"]


def load(paths):
    """Every result object in the files (a file holds one object or a list of them)."""
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
        items = data if isinstance(data, list) else [data]
        for it in items:
            if isinstance(it, dict):
                it.setdefault("_file", p)
                out.append(it)
    return out


def point(r):
    """(benchmark label, x, y) of one result, or None when it is not one of ours."""
    kind = r.get("benchmark")
    if kind == "latency" and "decode_tokens_per_s" in r:
        return "bench latency (decode tok/s)", r.get("batch_size"), r["decode_tokens_per_s"]
    if kind == "throughput" and "output_tokens_per_second" in r:
        x = r.get("concurrency") or r.get("num_requests")
        return "bench throughput (output tok/s)", x, r["output_tokens_per_second"]
    if kind == "serve" and "output_throughput" in r:
        x = r.get("max_concurrency") or r.get("max_concurrent_requests") or r.get("num_prompts")
        return "bench serve (output tok/s)", x, r["output_throughput"]
    return None


def device_label(r):
    dev = r.get("device") or ((r.get("config") or {}).get("engine") or {}).get("device") or "server"
    m = r.get("machine") or {}
    if dev == "cuda" and m.get("gpus"):
        return "CUDA (%s)" % m["gpus"][0]
    if dev == "cpu":
        cpu = m.get("cpu_model")
        cores = m.get("cpu_cores")
        if cpu:
            return "CPU (%s%s)" % (cpu, ", %d cores" % cores if cores else "")
        return "CPU"
    return dev


def nice_axis(v):
    """The top of the y axis (a multiple of a round step) and the step: about five ticks."""
    if v <= 0:
        return 1.0, 0.2
    raw = v / 5
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * exp
        if step >= raw:
            break
    return math.ceil(v / step - 1e-9) * step, step


def fmt(v):
    if v == 0:
        return "0"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def marker(shape, x, y, color):
    if shape == "square":
        return '<rect x="%.1f" y="%.1f" width="8" height="8" fill="%s"/>' % (x - 4, y - 4, color)
    if shape == "diamond":
        return '<path d="M%.1f %.1f l5 5 l-5 5 l-5 -5 z" fill="%s"/>' % (x, y - 5, color)
    if shape == "triangle":
        return '<path d="M%.1f %.1f l5 9 h-10 z" fill="%s"/>' % (x, y - 5, color)
    return '<circle cx="%.1f" cy="%.1f" r="4.5" fill="%s"/>' % (x, y, color)


def render(series, title, subtitle, xmin, xmax, log_y):
    W, H = 900, 560
    L, R, T, B = 90, 30, 80, 150
    pw, ph = W - L - R, H - T - B
    ys = [y for pts in series.values() for _, y in pts if y > 0] or [1.0]
    lx0, lx1 = math.log2(xmin), math.log2(xmax)
    if lx1 == lx0:
        lx1 = lx0 + 1

    def X(x):
        return L + (math.log2(x) - lx0) / (lx1 - lx0) * pw

    if log_y:
        ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        if ly1 == ly0:
            ly1 = ly0 + 1
        ticks = [m * 10 ** e for e in range(ly0, ly1 + 1) for m in (1, 2, 5) if m * 10 ** e <= 10 ** ly1]

        def Y(y):
            return T + ph - (math.log10(max(y, 10 ** ly0)) - ly0) / (ly1 - ly0) * ph
    else:
        top, step = nice_axis(max(ys) * 1.05)
        ticks = [k * step for k in range(int(round(top / step)) + 1)]

        def Y(y):
            return T + ph - y / top * ph

    s = []
    s.append('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
             'font-family="Helvetica, Arial, sans-serif">' % (W, H, W, H))
    s.append('<rect width="100%" height="100%" fill="white"/>')
    s.append('<text x="%d" y="32" font-size="20" font-weight="bold">%s</text>' % (L, escape(title)))
    if subtitle:
        s.append('<text x="%d" y="56" font-size="13" fill="#555">%s</text>' % (L, escape(subtitle)))
    # grid and y ticks
    for v in ticks:
        y = Y(v)
        s.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>' % (L, y, L + pw, y))
        s.append('<text x="%d" y="%.1f" font-size="12" text-anchor="end" fill="#333">%s</text>' % (L - 8, y + 4, "%g" % v))
    # x ticks at powers of two
    e = math.ceil(lx0)
    while e <= lx1 + 1e-9:
        x = X(2 ** e)
        s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>' % (x, T, x, T + ph))
        s.append('<text x="%.1f" y="%d" font-size="12" text-anchor="middle" fill="#333">%d</text>'
                 % (x, T + ph + 18, 2 ** e))
        e += 1
    s.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (L, T, pw, ph))
    s.append('<text x="%.1f" y="%d" font-size="14" text-anchor="middle">concurrent sequences (batch size)</text>'
             % (L + pw / 2, T + ph + 42))
    s.append('<text x="20" y="%.1f" font-size="14" text-anchor="middle" transform="rotate(-90 20 %.1f)">'
             'decode throughput (tokens/s%s)</text>' % (T + ph / 2, T + ph / 2, ", log scale" if log_y else ""))
    # series
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        shape = MARKERS[i % len(MARKERS)]
        pts = sorted(pts)
        if len(pts) > 1:
            d = " ".join("%s%.1f %.1f" % ("M" if j == 0 else "L", X(x), Y(y)) for j, (x, y) in enumerate(pts))
            s.append('<path d="%s" fill="none" stroke="%s" stroke-width="2"/>' % (d, color))
        for x, y in pts:
            s.append(marker(shape, X(x), Y(y), color))
            s.append('<text x="%.1f" y="%.1f" font-size="11" text-anchor="middle" fill="%s">%s</text>'
                     % (X(x), Y(y) - 9, color, fmt(y)))
        ly = T + ph + 64 + i * 20
        s.append(marker(shape, L + 6, ly - 4, color))
        s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>' % (L - 6, ly - 4, L + 18, ly - 4, color))
        s.append('<text x="%d" y="%d" font-size="13">%s</text>' % (L + 26, ly, escape(name)))
    s.append("</svg>")
    return "\n".join(s) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="`loom bench --json` files (an object or a list of objects each)")
    ap.add_argument("-o", "--out", default="concurrency.svg", help="the SVG to write")
    ap.add_argument("--title", default="loom: decode throughput against concurrency")
    ap.add_argument("--subtitle", default=None, help="default: the model(s) in the data")
    ap.add_argument("--log-y", choices=["auto", "on", "off"], default="auto",
                    help="log scale for throughput (auto: when the largest value is over 30x the smallest)")
    ap.add_argument("--xmax", type=int, default=64, help="right end of the x axis (widened to fit the data)")
    args = ap.parse_args(argv)

    try:
        results = load(args.inputs)
    except (OSError, ValueError) as e:
        print("plot_concurrency: %s" % e, file=sys.stderr)
        return 2
    series = {}
    models = set()
    for r in results:
        p = point(r)
        if not p or not p[1] or p[2] is None:
            print("plot_concurrency: skipping a result of %s (not a loom bench result with a concurrency)"
                  % r.get("_file"), file=sys.stderr)
            continue
        label, x, y = p
        series.setdefault("%s, %s" % (device_label(r), label), []).append((int(x), float(y)))
        m = r.get("model") or {}
        if isinstance(m, dict) and m.get("architecture"):
            models.add("%s (%s layers, hidden %s)" % (m["architecture"], m.get("num_hidden_layers"), m.get("hidden_size")))
        elif r.get("model_id"):
            models.add(str(r["model_id"]))
    if not series:
        print("plot_concurrency: no usable results in %s" % ", ".join(args.inputs), file=sys.stderr)
        return 1
    # one point per x in a series: the last one read wins (re-runs replace earlier ones)
    for k in series:
        series[k] = sorted(dict(series[k]).items())
    xs = [x for pts in series.values() for x, _ in pts]
    xmax = max(args.xmax, 2 ** math.ceil(math.log2(max(xs))))
    subtitle = args.subtitle if args.subtitle is not None else "; ".join(sorted(models))
    ys = [y for pts in series.values() for _, y in pts if y > 0]
    log_y = args.log_y == "on" or (args.log_y == "auto" and ys and max(ys) > 30 * min(ys))
    svg = render(series, args.title, subtitle, 1, xmax, log_y)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(svg)
    print("plot_concurrency: wrote %s (%d series, %d points)" % (args.out, len(series), len(xs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
