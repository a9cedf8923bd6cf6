"""Turn benches/compare's JSON lines into a Markdown table and an SVG plot (no dependencies).

Usage: python3 benches/plot.py compare.json compare.md compare.svg [RESULTS.md [marker]]

With RESULTS.md, the table also replaces what stands between its `<!-- marker:begin` and
`<!-- marker:end -->` lines (marker: "compare" unless given).
"""

import json
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows):
    by = {}
    for r in rows:
        by.setdefault((r["scenario"], r["viewers_asked"]), {})[r["target"]] = r
    out = [
        "| scenario | viewers | server | connected | delivered pkt/s | loss % (audio / video) | delay p50 / p99 ms "
        "| join→first packet p50 / p99 ms | server CPU % | server µs / packet | server RSS MiB "
        "| load tool CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for (scenario, viewers), t in by.items():
        for name in ("miclink", "janus"):
            r = t.get(name)
            if not r:
                continue
            out.append(
                f"| {scenario} | {viewers} | {name} | {r['viewers_connected']}/{r['viewers_asked']} "
                f"| {r['delivered_per_s']:.0f} | {r['loss_percent']:.3f} "
                f"({fmt(r.get('audio_loss_percent'), 3)} / {fmt(r.get('video_loss_percent'), 3)}) "
                f"| {fmt(r['delay_p50_ms'])} / {fmt(r['delay_p99_ms'])} "
                f"| {fmt(r['join_to_first_packet_p50_ms'], 0)} / {fmt(r['join_to_first_packet_p99_ms'], 0)} "
                f"| {fmt(r['server_cpu_percent'], 1)} | {fmt(r['server_cpu_us_per_packet'])} "
                f"| {fmt(r['server_rss_mib'], 1)} | {r['load_tool_cpu_percent']:.0f} |"
            )
        m, j = t.get("miclink"), t.get("janus")
        if m and j and j["server_cpu_us_per_packet"] and j["delay_p50_ms"]:
            ratios.append(
                f"| {scenario} | {viewers} "
                f"| {m['server_cpu_us_per_packet'] / j['server_cpu_us_per_packet']:.2f} "
                f"| {m['delay_p50_ms'] / j['delay_p50_ms']:.2f} "
                f"| {m['delay_p99_ms'] / j['delay_p99_ms']:.2f} |"
            )
    out += [
        "",
        "| scenario | viewers | CPU per packet, miclink / Janus | delay p50, miclink / Janus "
        "| delay p99, miclink / Janus |",
        "|---|---|---|---|---|",
    ] + ratios
    return "\n".join(out) + "\n"


def svg(rows):
    """Two panels against viewer count (cohost): server µs per packet, and loss %."""
    pts = {}
    for r in rows:
        if r["scenario"] != "cohost":
            continue
        pts.setdefault(r["target"], []).append(
            (r["viewers_asked"], r["server_cpu_us_per_packet"] or 0, r["loss_percent"])
        )
    for v in pts.values():
        v.sort()
    xs = sorted({p[0] for v in pts.values() for p in v}) or [1]
    w, h, pad = 360, 240, 48
    colors = {"miclink": "#d6336c", "janus": "#1c7ed6"}

    def panel(x0, title, idx):
        ymax = max([p[idx] for v in pts.values() for p in v] + [1e-9]) * 1.15
        xmax = max(xs)
        sx = lambda x: x0 + pad + (w - 2 * pad) * x / xmax
        sy = lambda y: h - pad + 10 - (h - 2 * pad) * y / ymax
        g = [f'<text x="{x0 + w / 2}" y="20" text-anchor="middle" font-size="13">{title}</text>']
        g.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="#888"/>')
        g.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="#888"/>')
        for x in xs:
            g.append(f'<text x="{sx(x)}" y="{sy(0) + 16}" text-anchor="middle" font-size="11">{x}</text>')
        for k in range(5):
            y = ymax * k / 4
            g.append(
                f'<text x="{sx(0) - 6}" y="{sy(y) + 4}" text-anchor="end" font-size="10">{y:.3g}</text>'
            )
        g.append(
            f'<text x="{x0 + w / 2}" y="{h}" text-anchor="middle" font-size="11">viewers</text>'
        )
        for name, v in pts.items():
            path = " ".join(f"{sx(p[0]):.1f},{sy(p[idx]):.1f}" for p in v)
            g.append(f'<polyline points="{path}" fill="none" stroke="{colors.get(name, "#000")}" stroke-width="2"/>')
            for p in v:
                g.append(f'<circle cx="{sx(p[0]):.1f}" cy="{sy(p[idx]):.1f}" r="3" fill="{colors.get(name, "#000")}"/>')
        return "\n".join(g)

    legend = "".join(
        f'<text x="{20 + 90 * i}" y="{h + 22}" font-size="12" fill="{colors[n]}">■ {n}</text>'
        for i, n in enumerate(colors)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 30}" '
        f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="#fff"/>\n'
        + panel(0, "server CPU µs per delivered packet (cohost)", 1)
        + "\n"
        + panel(w, "loss % (cohost)", 2)
        + "\n"
        + legend
        + "\n</svg>\n"
    )


def main():
    rows = load(sys.argv[1])
    with open(sys.argv[2], "w") as f:
        f.write(table(rows))
    with open(sys.argv[3], "w") as f:
        f.write(svg(rows))
    if len(sys.argv) > 4:
        marker = sys.argv[5] if len(sys.argv) > 5 else "compare"
        begin, end = f"<!-- {marker}:begin", f"<!-- {marker}:end -->"
        with open(sys.argv[4]) as f:
            text = f.read()
        head, rest = text.split(begin, 1)
        marker_line, rest = rest.split("\n", 1)
        _, tail = rest.split(end, 1)
        with open(sys.argv[4], "w") as f:
            f.write(head + begin + marker_line + "\n" + table(rows) + end + tail)


if __name__ == "__main__":
    main()
