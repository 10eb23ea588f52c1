#!/usr/bin/env python3
"""CPU per process kind, sampled every 0.2 s from /proc while a bench runs:
nats-server, clickhouse-server, the ingests, the aggregators (instances
summed) and the bench itself, in per cent of one core (200 = both cores
of a two-core machine). It shows where a run leaves cores idle: the start
(the publisher and nats-server), the steady part, the tail (the last
inserts), and which process kind works in each.

usage:
  benches/profile/cpu_timeline.py OUT &     # one line per sample into OUT
  target/release/cctv-bench-e2e --scenarios canonical-batch,canonical-batch-x2 \\
      --pairs 0 --no-output
  kill %1
"""
import os
import sys
import time

KINDS = ("nats-server", "clickhouse", "cctv-ingest", "cctv-aggregator", "cctv-bench-e2e")
PERIOD = 0.2


def sample():
    """CPU ticks (user + system) per process id, by kind."""
    ticks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        kind = next((k for k in KINDS if name.startswith(k[:15])), None)
        if kind is None:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        ticks.setdefault(kind, {})[pid] = int(fields[11]) + int(fields[12])
    return ticks


def main():
    out = open(sys.argv[1], "w") if len(sys.argv) > 1 else sys.stdout
    hertz = os.sysconf("SC_CLK_TCK")
    previous = {}
    while True:
        now = time.time()
        ticks = sample()
        line = [f"{now:.2f}"]
        for kind in KINDS:
            spent = sum(t - previous.get(pid, t) for pid, t in ticks.get(kind, {}).items())
            line.append(f"{kind}={100 * spent / hertz / PERIOD:.0f}")
        previous = {pid: t for kind in ticks for pid, t in ticks[kind].items()}
        out.write(" ".join(line) + "\n")
        out.flush()
        time.sleep(PERIOD)


if __name__ == "__main__":
    main()
