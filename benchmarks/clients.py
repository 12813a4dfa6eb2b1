"""Which asyncio Redis client is fastest here? redis-py versions and coredis, side by side.

    python benchmarks/clients.py [--runs 3] [--n 20000]

Each client gets its own venv under benchmarks/.venvs/client-*; all run against one fresh
redis-server, alternating, several runs; medians with min-max go to
benchmarks/results/clients.md. The measurements use each client's stock asyncio API
(asyncjobs replaces redis-py 8.1's command packing with hiredis's packer; its row shows
redis-py as asyncjobs configures it, installed from this checkout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RedisServer

HERE = Path(__file__).resolve().parent
CLIENTS = {
    "redis-py 5.3": ("redis-py", ["redis[hiredis]==5.3.1"]),
    "redis-py 6.4": ("redis-py", ["redis[hiredis]==6.4.0"]),
    "redis-py 7.1": ("redis-py", ["redis[hiredis]==7.1.0"]),
    "redis-py 8.1": ("redis-py", ["redis[hiredis]==8.1.0"]),
    "redis-py 8.1 + asyncjobs packer": ("asyncjobs", [str(HERE.parent)]),
    "coredis 5": ("coredis", ["coredis>=5,<6"]),
}
METRICS = ("xadd_pipelined", "evalsha_pipelined", "get_single", "import_rss_mib")


def python_of(name: str) -> Path:
    slug = name.replace(" + ", "-").replace(" ", "-").replace(".", "")
    return HERE / ".venvs" / f"client-{slug}" / "bin" / "python"


def install(name: str, pins: list[str]) -> None:
    python = python_of(name)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(python.parent.parent)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    for name, (_, pins) in CLIENTS.items():
        install(name, pins)
    samples: dict[str, list[dict]] = {name: [] for name in CLIENTS}
    versions: dict[str, str] = {}
    with RedisServer() as server:
        for run in range(args.runs):
            order = list(CLIENTS)[run % len(CLIENTS):] + list(CLIENTS)[:run % len(CLIENTS)]
            for name in order:
                kind = CLIENTS[name][0]
                done = subprocess.run(
                    [str(python_of(name)), str(HERE / "clients_probe.py"), kind,
                     str(server.port), str(args.n)],
                    capture_output=True, text=True, check=True, timeout=600,
                )
                row = json.loads(done.stdout.strip().splitlines()[-1])
                versions[name] = row["version"]
                samples[name].append(row)
                print(f"[run {run + 1}/{args.runs}] {name}: " + ", ".join(
                    f"{m} {row[m]:,.0f}" for m in METRICS), flush=True)
    write(samples, versions, args)
    return 0


def write(samples: dict[str, list[dict]], versions: dict[str, str], args) -> None:
    lines = [
        f"# asyncio Redis clients ({time.strftime('%Y-%m-%d')}, {args.runs} runs, "
        f"n={args.n:,}; medians, min-max)", "",
        "| client | version | XADD pipelined (/s) | EVALSHA pipelined (/s) | GET single (/s) "
        "| import RSS (MiB) |", "|---|---|---|---|---|---|",
    ]
    for name, rows in samples.items():
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in rows]
            fmt = "{:,.1f}" if metric == "import_rss_mib" else "{:,.0f}"
            cells.append(f"{fmt.format(statistics.median(values))} "
                         f"({fmt.format(min(values))}-{fmt.format(max(values))})")
        lines.append(f"| {name} | {versions[name]} | " + " | ".join(cells) + " |")
    out = HERE / "results" / "clients.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    (HERE / "results" / "clients.json").write_text(json.dumps(samples, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
