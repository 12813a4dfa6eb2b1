"""Summaries and writers: JSON, markdown tables, PNG chart (matplotlib optional)."""

from __future__ import annotations

import json
from pathlib import Path

from _harness import summarize

# workload -> [(metric key, column title, decimals or None for text)]
COLUMNS = {
    "enqueue": [
        ("single_jobs_per_s", "single (jobs/s)", 0),
        ("bulk_jobs_per_s", "bulk (jobs/s)", 0),
        ("bulk_method", "bulk method", None),
    ],
    "process_noop": [
        ("jobs_per_s", "jobs/s", 0),
        ("worker_cpu_us_per_job", "worker CPU µs/job", 0),
        ("redis_cpu_us_per_job", "Redis CPU µs/job", 0),
        ("cmds_per_job", "Redis cmds/job", 1),
        ("scripts_per_job", "EVAL*/job", 2),
        ("top_cmds_per_job", "top commands/job", None),
    ],
    "process_incr": [
        ("jobs_per_s", "jobs/s", 0),
        ("worker_cpu_us_per_job", "worker CPU µs/job", 0),
        ("redis_cpu_us_per_job", "Redis CPU µs/job", 0),
        ("cmds_per_job", "Redis cmds/job", 1),
        ("scripts_per_job", "EVAL*/job", 2),
        ("top_cmds_per_job", "top commands/job", None),
    ],
    "sleep": [
        ("wall_s", "wall (s)", 2),
        ("ratio_to_floor", "x floor", 2),
        ("floor_s", "floor (s)", 2),
    ],
    "latency": [("p50_ms", "p50 (ms)", 1), ("p99_ms", "p99 (ms)", 1), ("max_ms", "max (ms)", 1)],
    "delayed": [
        ("p50_ms", "p50 error (ms)", 1),
        ("p99_ms", "p99 error (ms)", 1),
        ("max_ms", "max error (ms)", 1),
        ("min_ms", "min error (ms)", 1),
    ],
    "delayed_spread": [
        ("p50_ms", "p50 error (ms)", 1),
        ("p99_ms", "p99 error (ms)", 1),
        ("max_ms", "max error (ms)", 1),
        ("min_ms", "min error (ms)", 1),
    ],
    "memory": [
        ("worker_peak_rss_mb", "worker peak RSS (MiB)", 1),
        ("redis_bytes_per_job", "Redis bytes/queued job", 0),
    ],
    "recovery": [
        ("recovery_s", "SIGKILL -> all done (s)", 1),
        ("setting", "recovery mechanism (defaults)", None),
    ],
    "scaling": [
        ("w1_jobs_per_s", "1 worker (jobs/s)", 0),
        ("w2_jobs_per_s", "2 workers (jobs/s)", 0),
        ("w4_jobs_per_s", "4 workers (jobs/s)", 0),
    ],
    "cores": [
        ("jobs_per_s", "probe jobs (jobs/s)", 0),
        ("incr_jobs_per_s", "redis-py INCR jobs (jobs/s)", 0),
        ("per_process_jobs_per_s", "probe jobs per process (jobs/s)", 0),
        ("cpu_us_per_job", "probe jobs, CPU µs/job", 0),
        ("incr_cpu_us_per_job", "INCR jobs, CPU µs/job", 0),
        ("how", "how", None),
    ],
}


def _titles(cfg: dict) -> dict:
    return {
        "enqueue": f"1. enqueue: {cfg['n_enqueue']:,} no-op jobs from one producer",
        "process_noop": f"2. process_noop: {cfg['n_process']:,} pre-queued no-op jobs, "
        "1 worker process",
        "process_incr": f"2b. process_incr: {cfg['n_process']:,} pre-queued no-op jobs that each "
        "do one INCR through redis-py, 1 worker process",
        "sleep": f"3. sleep: {cfg['n_sleep']:,} jobs of asyncio.sleep(0.05), 1 worker, "
        f"concurrency {cfg['concurrency']}",
        "latency": f"4. latency: {cfg['n_latency']:,} no-op jobs paced at 200/s, start - enqueue",
        "delayed": f"5. delayed: {cfg['n_delayed']:,} jobs all due at one instant ~2 s ahead, "
        "start - due (a burst: bounded by throughput)",
        "delayed_spread": f"5b. delayed_spread: {cfg['n_delayed']:,} jobs due across one second "
        "(job i at due + i/n s), start - its due time (the scheduler's precision)",
        "memory": "6. memory: worker peak RSS (during process_noop) and Redis bytes per "
        f"queued job ({cfg['n_memory']:,} jobs)",
        "recovery": f"7. recovery: {cfg['n_recovery']} jobs sleeping "
        f"{cfg['recovery_sleep']:g} s, worker "
        f"SIGKILLed {cfg['recovery_kill_after']:g} s after they started, 2nd worker at once",
        "scaling": f"8. scaling: {cfg['n_scaling']:,} no-op jobs with 1, 2, 4 worker processes",
        "cores": f"9. cores: {cfg.get('n_cores', cfg['n_process']):,} pre-queued no-op jobs "
        "on every core (one "
        "process per core: the system's own multi-process mode where it has one)",
    }


def short(metrics: dict) -> str:
    parts = []
    for k, v in metrics.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, (int, bool)) or (isinstance(v, str) and len(v) < 40):
            parts.append(f"{k}={v}")
    return " ".join(parts)


def summarize_cells(cells: list[dict]) -> dict:
    out: dict = {}
    for c in cells:
        out.setdefault(c["workload"], {}).setdefault(c["system"], []).append(c)
    summary: dict = {}
    for wl, by_sys in out.items():
        for name, cs in by_sys.items():
            ok = [c for c in cs if c["status"] == "ok"]
            s: dict = {"runs_ok": len(ok), "runs": len(cs)}
            bad = [c for c in cs if c["status"] != "ok"]
            if bad:
                s["status"] = bad[0]["status"] if not ok else "partial"
                s["reason"] = bad[0].get("reason", "")
            keys = {k for c in ok for k in c["metrics"]}
            for k in sorted(keys):
                vals = [c["metrics"].get(k) for c in ok]
                nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if wl == "recovery" and k == "recovery_s":
                    s["not_recovered_runs"] = sum(1 for v in vals if v is None)
                if nums and len(nums) == len(vals):
                    s[k] = summarize(nums)
                elif nums:
                    s[k] = {**summarize(nums), "missing_runs": len(vals) - len(nums)}
                else:
                    s[k] = next((v for v in vals if v is not None), None)
            summary.setdefault(wl, {})[name] = s
    return summary


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def _fmt(v, dec) -> str:
    if v is None:
        return "-"
    if dec is None:
        if isinstance(v, dict):
            return ", ".join(f"{k} {x}" for k, x in v.items())
        return str(v).replace("|", "/")
    if isinstance(v, dict):
        med = f"{v['median']:,.{dec}f}"
        if v["runs"] > 1:
            med += f" ({v['min']:,.{dec}f}-{v['max']:,.{dec}f})"
        if v.get("missing_runs"):
            med += f" [{v['missing_runs']} run(s) none]"
        return med
    return f"{v:,.{dec}f}" if isinstance(v, (int, float)) else str(v)


def _cell_text(wl: str, s: dict, key: str, dec) -> str:
    if wl == "recovery" and key == "recovery_s":
        nr = s.get("not_recovered_runs", 0)
        med = lambda k: (s.get(k) or {}).get("median", 0) if isinstance(s.get(k), dict) else 0  # noqa: E731
        if nr and not isinstance(s.get(key), dict):
            return (
                f"> {med('timeout_s'):.0f} s ({med('done'):.0f}/{med('n'):.0f} jobs done; "
                f"{nr}/{s['runs_ok']} runs)"
            )
        if nr:
            return _fmt(s.get(key), dec) + f"; > timeout in {nr} run(s)"
    return _fmt(s.get(key), dec)


# The peers whose worker is an asyncio program, and those that keep jobs in Redis Streams: the
# reference groups of the memory targets.
ASYNC_PEERS = ("arq", "saq", "streaq", "taskiq", "docket", "bullmq")
STREAMS_PEERS = ("streaq", "taskiq", "docket")


def _median(result: dict, wl: str, name: str, key: str) -> float | None:
    v = result["summary"].get(wl, {}).get(name, {}).get(key)
    return v["median"] if isinstance(v, dict) else None


def _best(result: dict, wl: str, key: str, among, lowest: bool) -> tuple[str, float] | None:
    vals = [(n, _median(result, wl, n, key)) for n in among]
    vals = [(n, v) for n, v in vals if v is not None]
    if not vals:
        return None
    return (min if lowest else max)(vals, key=lambda nv: nv[1])


def targets(result: dict) -> list[str]:
    """The issue's targets, each with asyncjobs' median, the reference and met/missed."""
    peers = [n for n in result["systems"] if n not in ("asyncjobs", "raw_xadd")]
    rows = []

    def ratio_row(title, wl, key, among, need, lowest=False, unit="", dec=1):
        ours, best = _median(result, wl, "asyncjobs", key), _best(result, wl, key, among, lowest)
        if ours is None or best is None:
            return
        ratio = ours / best[1] if best[1] else float("inf")
        met = ratio <= need if lowest else ratio >= need
        rows.append(f"| {title} | {ours:,.{dec}f}{unit} | {best[0]} {best[1]:,.{dec}f}{unit} | "
                    f"{ratio:.2f}x | {'met' if met else '**missed**'} |")

    def bound_row(title, wl, key, bound, unit):
        ours = _median(result, wl, "asyncjobs", key)
        if ours is not None:
            rows.append(f"| {title} | {ours:,.2f}{unit} | bound {bound:g}{unit} | - | "
                        f"{'met' if ours <= bound else '**missed**'} |")

    ratio_row("process no-op, 1 worker: >= 3x fastest peer (jobs/s)", "process_noop",
              "jobs_per_s", peers, 3.0, dec=0)
    ratio_row("process no-op, 1 process: >= 4x fastest peer (issue 12; jobs/s)",
              "process_noop", "jobs_per_s", peers, 4.0, dec=0)
    ratio_row("process redis-py INCR jobs, 1 process: >= 4x fastest peer (jobs/s)",
              "process_incr", "jobs_per_s", peers, 4.0, dec=0)
    ratio_row("every core, probe jobs: >= 4x fastest peer on every core (jobs/s)", "cores",
              "jobs_per_s", peers, 4.0, dec=0)
    ratio_row("every core, redis-py INCR jobs: >= 4x fastest peer on every core (jobs/s)",
              "cores", "incr_jobs_per_s", peers, 4.0, dec=0)
    bound_row("Redis commands per processed job: <= 4 (issue 12)", "process_noop",
              "cmds_per_job", 4, "")
    ratio_row("bulk enqueue: >= 2x fastest peer (jobs/s)", "enqueue", "bulk_jobs_per_s",
              peers, 2.0, dec=0)
    ratio_row("bulk enqueue: >= 0.5x raw pipelined XADD (jobs/s)", "enqueue",
              "bulk_jobs_per_s", ["raw_xadd"], 0.5, dec=0)
    ratio_row("latency p50 at 200/s: <= best peer", "latency", "p50_ms", peers, 1.0,
              lowest=True, unit=" ms", dec=2)
    bound_row("latency p99 at 200/s: < 10 ms", "latency", "p99_ms", 10, " ms")
    bound_row("latency p99 at 200/s: <= 2 ms (issue 12)", "latency", "p99_ms", 2, " ms")
    bound_row("sleep workload: within 10% of its floor (x floor)", "sleep", "ratio_to_floor",
              1.10, "x")
    ratio_row("worker peak RSS: <= leanest async peer", "memory", "worker_peak_rss_mb",
              [n for n in peers if n in ASYNC_PEERS], 1.0, lowest=True, unit=" MiB")
    ratio_row("Redis bytes/queued job: <= leanest Streams peer", "memory",
              "redis_bytes_per_job", [n for n in peers if n in STREAMS_PEERS], 1.0,
              lowest=True, unit=" B", dec=0)
    bound_row("delayed over 1 s, start error p50 (issue 3 aim: <= 5 ms)", "delayed_spread",
              "p50_ms", 5, " ms")
    bound_row("delayed over 1 s, start error p99 (issue 3 aim: <= 50 ms)", "delayed_spread",
              "p99_ms", 50, " ms")
    bound_row("recovery after SIGKILL: within the claim timeout (15 s)", "recovery",
              "recovery_s", 15, " s")
    if not rows:
        return []
    return ["", "## Targets (asyncjobs' median against the best peer's median in this run)", "",
            "| target | asyncjobs | reference | ratio | verdict |", "|---|---|---|---|---|",
            *rows]


OVERVIEW = [  # (workload, metric, column title, decimals)
    ("enqueue", "single_jobs_per_s", "enqueue one at a time (jobs/s)", 0),
    ("enqueue", "bulk_jobs_per_s", "enqueue bulk (jobs/s)", 0),
    ("process_noop", "jobs_per_s", "process no-op (jobs/s)", 0),
    ("process_incr", "jobs_per_s", "process redis-py INCR (jobs/s)", 0),
    ("cores", "jobs_per_s", "every core, no-op (jobs/s)", 0),
    ("sleep", "ratio_to_floor", "sleep (x floor)", 2),
    ("latency", "p50_ms", "latency p50 (ms)", 2),
    ("latency", "p99_ms", "latency p99 (ms)", 1),
    ("delayed_spread", "p50_ms", "delayed p50 (ms)", 1),
    ("delayed_spread", "p99_ms", "delayed p99 (ms)", 1),
    ("memory", "worker_peak_rss_mb", "worker RSS (MiB)", 1),
    ("memory", "redis_bytes_per_job", "Redis B/job", 0),
    ("recovery", "recovery_s", "recovery (s)", 0),
    ("scaling", "w4_jobs_per_s", "4 workers (jobs/s)", 0),
]


def overview(result: dict) -> list[str]:
    """One row per system, the medians of each workload's headline metric."""
    summary = result["summary"]
    cols = [c for c in OVERVIEW if c[0] in summary]
    if not cols:
        return []
    lines = ["", "## Overview (medians; details in the sections below)", "",
             "| system | " + " | ".join(c[2] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for name in result["systems"]:
        cells = []
        for wl, key, _, dec in cols:
            s = summary[wl].get(name)
            if s is None:
                cells.append("")
            elif s.get("status") in ("na", "error"):
                cells.append("n/a" if s["status"] == "na" else "error")
            elif wl == "recovery" and not isinstance(s.get(key), dict):
                cells.append(f"> {_median(result, wl, name, 'timeout_s') or 0:.0f}")
            else:
                cells.append(_fmt(_median(result, wl, name, key), dec))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    m, cfg = result["machine"], result["config"]
    lines = [
        f"# asyncjobs benchmark results ({m['date']})",
        "",
        f"Machine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB; Python {m['python']}; "
        f"redis-server {m['redis_server']}; {m['os']}; host `{m['host']}`.",
        "",
        f"Runs: {cfg['runs']} (medians, min-max in parentheses when runs > 1); "
        f"{'QUICK sizes' if cfg['quick'] else 'full sizes'}; "
        f"worker concurrency {cfg['concurrency']} "
        f"unless noted; systems alternate within each run.",
        *[f"\nNote on {w}: {text}." for w, text in result.get("notes", {}).items()],
        "",
        "| system | version | settings used | bulk enqueue |",
        "|---|---|---|---|",
    ]
    for name, info in result["systems"].items():
        lines.append(
            f"| {name} | {info.get('version', '?')} | {_fmt(info.get('settings', ''), None)} | "
            f"{_fmt(info.get('bulk', ''), None)} |"
        )
    for name, reason in result.get("skipped", {}).items():
        lines.append(f"| {name} | - | skipped: {reason} | - |")
    if "asyncjobs" in result["systems"]:
        lines += targets(result)
    lines += overview(result)
    order = list(result["systems"])
    for wl in cfg["workloads"]:
        by_sys = result["summary"].get(wl)
        if not by_sys:
            continue
        by_sys = dict(
            sorted(by_sys.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
        )
        cols = COLUMNS[wl]
        lines += [
            "",
            f"## {_titles(cfg)[wl]}",
            "",
            "| system | " + " | ".join(c[1] for c in cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for name, s in by_sys.items():
            if s.get("status") in ("na", "error"):
                label = "N/A" if s["status"] == "na" else "ERROR"
                lines.append(
                    f"| {name} | {label}: {_fmt(s.get('reason', ''), None)} |"
                    + " |" * (len(cols) - 1)
                )
                continue
            row = [_cell_text(wl, s, k, d) for k, _, d in cols]
            if s.get("status") == "partial":
                row[-1] += f" (failed runs: {s['reason']})"
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    notes = [f"- {n}: {i['notes']}" for n, i in result["systems"].items() if i.get("notes")]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


CHART = [
    ("enqueue", "single_jobs_per_s", "enqueue single (jobs/s)", False),
    ("enqueue", "bulk_jobs_per_s", "enqueue bulk (jobs/s)", False),
    ("process_noop", "jobs_per_s", "process no-op, 1 worker (jobs/s)", False),
    ("process_incr", "jobs_per_s", "process redis-py INCR jobs, 1 worker (jobs/s)", False),
    ("cores", "jobs_per_s", "process no-op on every core (jobs/s)", False),
    ("sleep", "ratio_to_floor", "sleep: wall / floor (lower is better)", False),
    ("latency", "p99_ms", "latency p99 (ms, log scale, lower is better)", True),
    ("delayed", "p99_ms", "delayed burst: start error p99 (ms, log, lower is better)", True),
    ("delayed_spread", "p99_ms", "delayed over 1 s: start error p99 (ms, log, lower better)",
     True),
    ("memory", "redis_bytes_per_job", "Redis bytes per queued job (lower is better)", False),
    ("scaling", "w4_jobs_per_s", "process no-op, 4 workers (jobs/s)", False),
]


def _label(v: float) -> str:
    return f" {v:,.0f}" if abs(v) >= 100 else f" {v:.3g}"


def chart(result: dict, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "matplotlib not installed: chart skipped "
            "(python benchmarks/setup_peers.py --harness-only)"
        )
    panels = []
    order = list(result["systems"])
    for wl, key, title, log in CHART:
        rows = [
            (name, s[key])
            for name, s in result["summary"].get(wl, {}).items()
            if isinstance(s.get(key), dict)
        ]
        rows.sort(key=lambda r: order.index(r[0]) if r[0] in order else 99)
        if rows:
            panels.append((title, rows, log))
    if not panels:
        return "nothing to chart"
    cols = 2
    nrows = (len(panels) + 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(13, 3.2 * nrows), squeeze=False)
    for ax, (title, rows, log) in zip(axes.flat, panels, strict=False):
        names = [r[0] for r in rows]
        med = [r[1]["median"] for r in rows]
        lo = [r[1]["median"] - r[1]["min"] for r in rows]
        hi = [r[1]["max"] - r[1]["median"] for r in rows]
        colors = [
            "tab:red" if n == "asyncjobs" else "tab:gray" if n == "raw_xadd" else "tab:blue"
            for n in names
        ]
        ax.barh(names, med, xerr=[lo, hi], color=colors, capsize=3)
        ax.invert_yaxis()
        if log and min(med) > 0:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        for y, v in enumerate(med):
            ax.text(v, y, _label(v), va="center", fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    m = result["machine"]
    fig.suptitle(
        f"asyncjobs benchmarks - {m['date'][:10]} - {m['cores']} cores, Python {m['python']}, "
        f"redis {m['redis_server']} (median, whiskers min-max)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"chart {path}"
