#!/usr/bin/env python3
"""Where nats-server's CPU goes, from `perf script -F ip,dso` output on stdin.

Debian's nats-server binary is stripped, so perf shows bare addresses; a Go
binary keeps its function table (.gopclntab) though, and `go tool addr2line`
(Debian package golang-go) names them. Prints the self and inclusive share of
the top functions over all samples of the nats-server process.

usage: perf script -i perf.data -F ip,dso | nats_symbols.py [BINARY] [TOP]
"""
import collections
import subprocess
import sys

binary = sys.argv[1] if len(sys.argv) > 1 else "/usr/sbin/nats-server"
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
# A non-PIE Go binary maps file offset 0 at this address; perf prints offsets.
BASE = 0x400000
PACKAGE = "github.com/nats-io/nats-server/server."

samples, frames = [], []
for line in sys.stdin:
    line = line.strip()
    if not line:
        if frames:
            samples.append(frames)
        frames = []
        continue
    address, dso = line.split(None, 1)
    frames.append((int(address, 16), dso))
if frames:
    samples.append(frames)
if not samples:
    sys.exit("no samples on stdin")


def key(index, address):
    # Callers' frames hold return addresses: step back into the call.
    return address + BASE - (1 if index > 0 else 0)


addresses = sorted({key(i, a) for s in samples for i, (a, d) in enumerate(s) if "nats-server" in d})
out = subprocess.run(
    ["go", "tool", "addr2line", binary],
    input="".join(f"{a:#x}\n" for a in addresses),
    capture_output=True,
    text=True,
    check=True,
).stdout.split("\n")
names = {a: out[2 * i].replace(PACKAGE, "") for i, a in enumerate(addresses)}

own, inclusive = collections.Counter(), collections.Counter()
for sample in samples:
    stack = []
    for i, (address, dso) in enumerate(sample):
        if "nats-server" in dso:
            stack.append(names[key(i, address)])
        elif "kernel" in dso:
            stack.append("[kernel]")
        else:
            stack.append(dso)
    own[stack[0]] += 1
    for name in set(stack):
        inclusive[name] += 1

total = len(samples)
print(f"{total} samples")
print("\nself %  function")
for name, count in own.most_common(top):
    print(f"{100 * count / total:6.1f}  {name}")
print("\ninclusive %  function")
for name, count in inclusive.most_common(top):
    print(f"{100 * count / total:6.1f}  {name}")
