#!/usr/bin/env python3
"""A run's timeline from the services' logs: every insert of the aggregators
and, at most every quarter second, one settled ingest batch, with the raw
messages settled and rows inserted so far.

Which stage is behind shows at once: the ingests have settled every raw
message long before the last insert when the aggregators (or ClickHouse)
are the bottleneck, and inserts that start as soon as the previous one
ended mean the group commit waits for nothing.

usage:
  CCTV_BENCH_KEEP=1 \\
  CCTV_LOG=info,cctv_aggregator::inserter=debug,cctv_ingest::service=debug \\
      target/release/cctv-bench-e2e --scenarios canonical-batch --no-output
  benches/profile/timeline.py DIR     # the "logs kept in DIR" of the run
"""
import glob
import json
import sys
from datetime import datetime


def fields(raw):
    """Log fields, with the numbers tracing writes as strings made ints."""
    return {
        key: int(value) if isinstance(value, str) and value.isdigit() else value
        for key, value in raw.items()
    }


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    entries = []
    for path in glob.glob(sys.argv[1] + "/cctv-*.log"):
        who = path.rsplit("/", 1)[-1][len("cctv-") : -len(".log")]
        with open(path, encoding="utf-8", errors="replace") as log:
            for line in log:
                if '"batch settled"' not in line and '"insert"' not in line:
                    continue
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
                entries.append((at.timestamp(), who, fields(entry["fields"])))
    if not entries:
        sys.exit("no insert or batch lines: was CCTV_LOG set as above?")
    entries.sort(key=lambda entry: entry[0])
    start = entries[0][0]
    settled = rows = 0
    shown = -1
    for at, who, entry in entries:
        offset = at - start
        if "rows" in entry:
            rows += entry["rows"]
            print(
                f"{offset:6.2f} s {who:14} insert {entry['rows']:7} rows of "
                f"{entry['partitions']:2} partitions in {entry['millis']:4} ms"
                f"   raw settled {settled:7}, rows {rows:8}"
            )
        else:
            settled += entry["messages"]
            if int(offset * 4) != shown:
                shown = int(offset * 4)
                print(
                    f"{offset:6.2f} s {who:14} batch of {entry['messages']:4} raw "
                    f"in {entry['millis']:4} ms        raw settled {settled:7}"
                )
    last = max(at for at, _, entry in entries if "messages" in entry)
    print(f"last ingest batch settled at {last - start:.2f} s")


main()
