"""Shared helpers for the benchmark orchestrator: redis-server lifecycle, adapter subprocesses,
statistics, machine info. Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEMS_DIR = HERE / "systems"
VENVS = HERE / ".venvs"
sys.path.insert(0, str(SYSTEMS_DIR))

from _resp import SyncRedis  # noqa: E402

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class BenchError(Exception):
    """A script crashed or a workload did not complete: makes run.py exit non-zero."""


# ---- redis-server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on a free port, no persistence, in a temp dir."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while True:
            try:
                self.client = SyncRedis(self.url)
                self.client.call("PING")
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.02)

    def info(self, section: str) -> dict[str, str]:
        raw = self.client.call("INFO", section).decode()
        out = {}
        for line in raw.splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def commandstats(self) -> dict[str, int]:
        stats = {}
        for k, v in self.info("commandstats").items():
            calls = int(v.split("calls=")[1].split(",")[0])
            stats[k.removeprefix("cmdstat_")] = calls
        return stats

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the redis-server has used so far."""
        info = self.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def used_memory(self) -> int:
        return int(self.info("memory")["used_memory"])

    def get_float(self, key: str) -> float | None:
        v = self.client.call("GET", key)
        return float(v) if v is not None else None

    def get_int(self, key: str) -> int:
        v = self.client.call("GET", key)
        return int(v) if v is not None else 0

    def reset_probe(self) -> None:
        self.client.call(
            "DEL", "bench:first", "bench:last", "bench:done", "bench:started", "bench:starts"
        )

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def redis_version() -> str:
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    for tok in out.split():
        if tok.startswith("v="):
            return tok[2:]
    return out.strip()


# ---- systems and adapter subprocesses -------------------------------------------------------
class System:
    def __init__(self, name: str, python: str, adapter: Path, log_dir: Path) -> None:
        self.name, self.python, self.adapter, self.log_dir = name, python, adapter, log_dir
        self.info: dict = {}

    def cmd(self, role: str, url: str, **opts) -> list[str]:
        argv = [self.python, str(self.adapter), role, "--redis-url", url]
        for k, v in opts.items():
            if v is True:
                argv.append("--" + k.replace("_", "-"))
            elif v is not None and v is not False:
                argv += ["--" + k.replace("_", "-"), str(v)]
        return argv

    def log(self, role: str):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{self.name}.log", "a")

    def role(self, role: str, url: str, timeout: float = 600, **opts) -> dict:
        """Run a one-shot role; return its JSON line. Raises BenchError on crash/timeout."""
        with self.log(role) as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} {role} {opts}\n")
            log.flush()
            try:
                p = subprocess.run(
                    self.cmd(role, url, **opts),
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    timeout=timeout,
                    cwd=SYSTEMS_DIR,
                )
            except subprocess.TimeoutExpired:
                raise BenchError(f"{self.name} {role} timed out after {timeout:.0f}s") from None
        lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
        if p.returncode != 0 or not lines:
            raise BenchError(
                f"{self.name} {role} exited {p.returncode} "
                f"(see {self.log_dir / (self.name + '.log')})"
            )
        return json.loads(lines[-1])

    def start_worker(
        self,
        url: str,
        concurrency: int,
        expect: int = 0,
        record: bool = False,
        scheduler: bool = False,
        client: str = "",
        processes: int = 1,
    ) -> subprocess.Popen:
        """One worker (`processes` > 1: the system's own multi-process mode, one command)."""
        env = dict(
            os.environ,
            BENCH_REDIS_URL=url,
            BENCH_EXPECT=str(expect),
            BENCH_RECORD="1" if record else "0",
            BENCH_CLIENT=client,
            PYTHONUNBUFFERED="1",
        )
        log = self.log("worker")
        log.write(f"\n--- {time.strftime('%H:%M:%S')} worker c={concurrency} expect={expect}"
                  f" client={client or 'probe'} processes={processes}\n")
        log.flush()
        p = subprocess.Popen(
            self.cmd("worker", url, concurrency=concurrency, scheduler=scheduler,
                     processes=processes if processes > 1 else None),
            stdout=log,
            stderr=log,
            env=env,
            cwd=SYSTEMS_DIR,
            start_new_session=True,
        )  # own process group: kill it whole
        log.close()
        return p


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of one process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and every live descendant, plus
    what their exited children used (cutime/cstime of those that were waited for)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid] + [c for c, _ in descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / tick


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, starttime) for every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    return table


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, starttime) of every descendant of pid (children that left its process group too,
    e.g. RQ's work horse calls setpgrp())."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(child)
    out, todo = [], list(children.get(pid, []))
    while todo:
        c = todo.pop()
        out.append((c, table[c][1]))
        todo.extend(children.get(c, []))
    return out


def stop_worker(p: subprocess.Popen, hard: bool = False, grace: float = 10.0) -> None:
    """Stop a worker and everything it started. hard=True: SIGKILL the whole process tree at
    once (a crash); otherwise SIGTERM its process group, wait up to `grace` s, then SIGKILL
    whatever is left of the tree."""
    tree = descendants(p.pid)
    if hard:
        for pid, _ in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL if hard else signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    table = _proc_table()
    for pid, start in tree + descendants(p.pid):
        if pid in table and table[pid][1] == start:  # same process, not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(5)


def wait_count(
    r: RedisServer,
    key: str,
    target: int,
    timeout: float,
    workers: list[subprocess.Popen] = (),
    poll: float = 0.01,
) -> tuple[bool, int]:
    """Poll GET key until >= target. Returns (reached, last value). Raises if all workers died."""
    deadline = time.time() + timeout
    value = 0
    while time.time() < deadline:
        value = r.get_int(key)
        if value >= target:
            return True, value
        if workers and all(w.poll() is not None for w in workers):
            raise BenchError(
                f"worker exited with code {workers[0].returncode} "
                f"before {key} reached {target} (at {value})"
            )
        time.sleep(poll)
    return False, value


# ---- statistics -----------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def summarize(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


# ---- machine --------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "redis_server": redis_version(),
        "os": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
