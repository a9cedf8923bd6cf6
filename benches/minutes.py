"""Print a miclink-load --soak report (JSON) as a Markdown table, a row per minute.

Usage: python3 benches/minutes.py report.json
"""

import json
import sys


def d(v):
    return "-" if v is None else f"{v:.1f}"


def main():
    with open(sys.argv[1]) as f:
        r = json.load(f)
    print(
        f"viewers {r['viewers_connected']}/{r['viewers_asked']}; loss {r['loss_percent']:.3f}% "
        f"(audio {r['audio_loss_percent']:.3f}%, video {r['video_loss_percent']:.3f}%); "
        f"delay p50 {d(r['delay_p50_ms'])} ms, p99 {d(r['delay_p99_ms'])} ms\n"
    )
    print(
        "| minute | expected | delivered | lost % | duplicates | delay p50 / p99 ms "
        "| longest silence ms (stream) | server RSS MiB | server CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m in r.get("minutes") or []:
        lost = 100 * m["lost"] / max(m["expected"], 1)
        print(
            f"| {m['minute']} | {m['expected']} | {m['delivered']} | {lost:.3f} | {m['duplicates']} "
            f"| {d(m['delay_p50_ms'])} / {d(m['delay_p99_ms'])} "
            f"| {m['max_gap_ms']:.0f} ({m['max_gap_stream']}) "
            f"| {d(m['server_rss_mib'])} | {d(m['server_cpu_percent'])} |"
        )


if __name__ == "__main__":
    main()
