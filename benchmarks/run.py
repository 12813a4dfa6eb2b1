"""Run the asyncjobs benchmark suite against every installed peer.

    python benchmarks/run.py                      # everything, 3 runs, full sizes
    python benchmarks/run.py --quick              # CI smoke run: tiny sizes, 1 run
    python benchmarks/run.py --only enqueue,latency --systems asyncjobs,arq --runs 5

Peers are installed with `python benchmarks/setup_peers.py`. Results go to
benchmarks/results/<date>-<host>[-quick].json and latest[-quick].md / latest[-quick].png.
Exit status is non-zero only if an adapter crashed or a workload did not complete.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report
import _workloads as W
from _harness import HERE, SYSTEMS_DIR, VENVS, BenchError, System, machine_info

WORKLOADS = [
    "enqueue",
    "process_noop",
    "process_incr",
    "sleep",
    "latency",
    "delayed",
    "delayed_spread",
    "memory",
    "recovery",
    "scaling",
    "cores",
]
PEERS = ["arq", "saq", "streaq", "taskiq", "docket", "bullmq", "rq", "celery", "dramatiq"]
BASELINE = "raw_xadd"  # harness-env redis-py pipelined XADD; enqueue workload only

FULL = {
    "n_enqueue": 20_000,
    "n_process": 20_000,
    "n_sleep": 2_000,
    "n_latency": 2_000,
    "n_delayed": 1_000,
    "n_memory": 100_000,
    "n_recovery": 10,
    "recovery_sleep": 3.0,
    "recovery_kill_after": 1.0,
    "n_scaling": 20_000,
    "n_cores": 100_000,
    "recovery_timeout": 120.0,
}
QUICK = {
    "n_enqueue": 200,
    "n_process": 200,
    "n_sleep": 200,
    "n_latency": 200,
    "n_delayed": 20,
    "n_memory": 1_000,
    "n_recovery": 2,
    "recovery_sleep": 1.0,
    "recovery_kill_after": 0.5,
    "n_scaling": 200,
    "n_cores": 200,
    "recovery_timeout": 30.0,
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 run (CI smoke test)")
    ap.add_argument("--only", default="", help="comma-separated workloads: " + ",".join(WORKLOADS))
    ap.add_argument(
        "--systems",
        default="",
        help="comma-separated systems (default: all available): "
        + ",".join(["asyncjobs", *PEERS, BASELINE]),
    )
    ap.add_argument("--runs", type=int, default=None, help="runs per workload (default 3, quick 1)")
    ap.add_argument("--concurrency", type=int, default=100, help="worker concurrency (default 100)")
    ap.add_argument(
        "--recovery-timeout",
        type=float,
        default=None,
        help="seconds to wait for recovery after SIGKILL (default 120, quick 30)",
    )
    ap.add_argument(
        "--delayed-timeout",
        type=float,
        default=90.0,
        help="seconds after the due time to wait for delayed jobs (default 90)",
    )
    ap.add_argument("--out", default=str(HERE / "results"), help="output directory")
    ap.add_argument(
        "--render", metavar="JSON", help="only re-render the markdown/PNG of a results JSON"
    )
    return ap.parse_args()


def render(path: str) -> int:
    result = json.loads(Path(path).read_text())
    suffix = "-quick" if result["config"].get("quick") else ""
    out = Path(path).parent
    (out / f"latest{suffix}.md").write_text(_report.markdown(result))
    print(
        f"wrote {out / f'latest{suffix}.md'}; {_report.chart(result, out / f'latest{suffix}.png')}"
    )
    return 0


def discover(names: list[str], log_dir: Path) -> tuple[list[System], dict[str, str]]:
    """Return (systems to run, {name: reason} for the ones skipped)."""
    found, skipped = [], {}
    for name in names:
        adapter = SYSTEMS_DIR / f"{name}_bench.py"
        own = VENVS / name / "bin" / "python"
        if name == "asyncjobs" and own.exists():
            python = str(own)  # runtime dependencies only, like each peer's venv
        elif name in ("asyncjobs", BASELINE):
            python = sys.executable  # asyncjobs without its venv: the repo installed here
        else:
            python = str(VENVS / name / "bin" / "python")
            if not Path(python).exists():
                skipped[name] = "not installed (run benchmarks/setup_peers.py)"
                continue
        if not adapter.exists():
            skipped[name] = f"adapter missing ({adapter.relative_to(HERE.parent)})"
            continue
        found.append(System(name, python, adapter, log_dir))
    return found, skipped


def run_cell(system: System, workload: str, cfg, rss: dict) -> dict:
    cell = {"system": system.name, "workload": workload, "status": "ok", "metrics": {}}
    t0 = time.time()
    try:
        if system.name == BASELINE and workload != "enqueue":
            raise W.NotApplicable("baseline: enqueue only")
        if workload == "enqueue":
            cell["metrics"] = W.enqueue(system, cfg)
        elif workload == "process_noop":
            cell["metrics"] = W.process(system, cfg)
            rss[system.name] = cell["metrics"]["peak_rss_mb"]
        elif workload == "memory":
            cell["metrics"] = W.memory(system, cfg, rss.get(system.name))
        else:
            cell["metrics"] = getattr(W, workload)(system, cfg)
    except W.NotApplicable as exc:
        cell.update(status="na", reason=str(exc))
    except BenchError as exc:
        cell.update(status="error", reason=str(exc))
    except Exception as exc:  # a harness bug must not hide the other systems' results
        traceback.print_exc()
        cell.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    cell["elapsed_s"] = round(time.time() - t0, 1)
    return cell


def main() -> int:
    args = parse_args()
    if args.render:
        return render(args.render)
    sizes = QUICK if args.quick else FULL
    cfg = SimpleNamespace(
        **sizes, concurrency=args.concurrency, delayed_timeout=args.delayed_timeout
    )
    if args.recovery_timeout is not None:
        cfg.recovery_timeout = args.recovery_timeout
    runs = args.runs or (1 if args.quick else 3)
    workloads = [w.strip() for w in args.only.split(",") if w.strip()] or WORKLOADS
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        sys.exit(f"unknown workload(s): {', '.join(bad)}; known: {', '.join(WORKLOADS)}")
    names = [s.strip() for s in args.systems.split(",") if s.strip()] or [
        "asyncjobs",
        *PEERS,
        BASELINE,
    ]

    machine = machine_info()
    out_dir = Path(args.out)
    stamp = time.strftime("%Y-%m-%d") + "-" + machine["host"] + ("-quick" if args.quick else "")
    log_dir = out_dir / "logs" / stamp
    systems, skipped = discover(names, log_dir)
    for name, reason in skipped.items():
        print(f"[skip] {name}: {reason}", flush=True)
    infos = {}
    for s in list(systems):
        try:
            s.info = s.role("info", "redis://127.0.0.1:1/0", timeout=120)
            infos[s.name] = s.info
            print(
                f"[system] {s.name} {s.info.get('version', '?')}: {s.info.get('settings', '')}",
                flush=True,
            )
        except BenchError as exc:
            skipped[s.name] = f"info role failed: {exc}"
            print(f"[skip] {s.name}: {skipped[s.name]}", flush=True)
            systems.remove(s)

    cells: list[dict] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f"{stamp}.partial.json"

    def result_so_far() -> dict:
        return {
            "machine": machine,
            "config": {**vars(cfg), "runs": runs, "quick": args.quick, "workloads": workloads},
            "systems": infos,
            "skipped": skipped,
            "cells": cells,
            "summary": _report.summarize_cells(cells),
        }

    for run in range(1, runs + 1):
        for wi, workload in enumerate(workloads):
            k = (run - 1 + wi) % max(1, len(systems))
            for s in systems[k:] + systems[:k]:  # rotate who goes first
                if s.name == BASELINE and workload != "enqueue":
                    continue
                cell = run_cell(
                    s,
                    workload,
                    cfg,
                    rss={
                        c["system"]: c["metrics"].get("peak_rss_mb")
                        for c in cells
                        if c["run"] == run
                        and c["workload"] == "process_noop"
                        and c["status"] == "ok"
                    },
                )
                cell["run"] = run
                cells.append(cell)
                shown = cell.get("reason") or _report.short(cell["metrics"])
                print(
                    f"[run {run}/{runs}] {workload:<12} {s.name:<10} {cell['status']:<5} "
                    f"{cell['elapsed_s']:>6.1f}s  {shown}",
                    flush=True,
                )
                # A checkpoint after every cell: a long run cut short keeps what it measured
                # (render it with --render; the tables show each cell's run count).
                _report.write_json(partial, result_so_far())

    result = result_so_far()
    suffix = "-quick" if args.quick else ""
    json_path = out_dir / f"{stamp}.json"
    _report.write_json(json_path, result)
    partial.unlink(missing_ok=True)
    md_path = out_dir / f"latest{suffix}.md"
    md_path.write_text(_report.markdown(result))
    msg = _report.chart(result, out_dir / f"latest{suffix}.png")
    print(f"wrote {json_path}, {md_path}; {msg}")
    errors = [c for c in cells if c["status"] == "error"]
    if "asyncjobs" in skipped:
        print(f"NOTE: asyncjobs was not benchmarked: {skipped['asyncjobs']}")
    if errors:
        print(f"{len(errors)} cell(s) failed:")
        for c in errors:
            print(f"  run {c['run']} {c['workload']} {c['system']}: {c['reason']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
