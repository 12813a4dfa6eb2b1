"""Install the benchmark peers, each into its own virtualenv under benchmarks/.venvs/<peer>/.

Also installs the harness's own extras (redis-py for the raw XADD baseline, matplotlib for the
chart, psutil for RSS) into the Python that runs this script, unless --no-harness.

    python benchmarks/setup_peers.py                 # all peers + harness extras
    python benchmarks/setup_peers.py --peers arq,rq  # some peers
    python benchmarks/setup_peers.py --harness-only
    python benchmarks/setup_peers.py --recreate      # wipe and rebuild the venvs
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"

# Pinned: the newest versions pip could install for Python 3.11 when the suite was written.
PEERS: dict[str, list[str]] = {
    "arq": ["arq==0.28.0"],  # pulls redis[hiredis]<6
    "saq": [
        "saq[redis,hiredis]==0.26.4",
        "typing_extensions",
    ],  # saq imports it but does not declare it
    # streaq uses coredis, not redis-py; redis-py is for the process_incr workload's jobs.
    "streaq": ["streaq==7.2.0", "redis[hiredis]==8.1.0"],
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4"],
    # redis-py 8 caps an asyncio ConnectionPool at 100 connections by default; docket at
    # concurrency 100 then loses jobs to MaxConnectionsError in claim(), so keep redis-py 7.
    "docket": ["pydocket==0.27.0", "redis>=6,<8"],
    "bullmq": ["bullmq==3.4.4"],
    "rq": ["rq==3.0.0"],
    "celery": ["celery[redis,gevent]==5.7.0"],
    # Multi-process peer: its worker CLI forks one process per core by default.
    "dramatiq": ["dramatiq[redis]==2.2.1"],
}
# Packages whose installed versions are printed after each install.
REPORT = {
    "arq": ["arq", "redis", "hiredis"],
    "saq": ["saq", "redis", "hiredis"],
    "streaq": ["streaq", "coredis", "redis"],
    "taskiq": ["taskiq", "taskiq-redis", "redis"],
    "docket": ["pydocket", "redis"],
    "bullmq": ["bullmq", "redis"],
    "rq": ["rq", "redis"],
    "celery": ["celery", "kombu", "redis", "gevent"],
    "dramatiq": ["dramatiq", "redis"],
}
HARNESS = ["redis", "matplotlib", "psutil"]


def venv_python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def pip(python: Path | str, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    print("  $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def versions(python: Path | str, names: list[str]) -> str:
    code = (
        "import importlib.metadata as m, sys\n"
        "out = []\n"
        "for n in sys.argv[1:]:\n"
        "    try: out.append(f'{n}=={m.version(n)}')\n"
        "    except m.PackageNotFoundError: out.append(f'{n} (absent)')\n"
        "print(', '.join(out))\n"
    )
    return subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True
    ).stdout.strip()


def install_peer(peer: str, recreate: bool) -> bool:
    target = VENVS / peer
    if recreate and target.exists():
        shutil.rmtree(target)
    print(f"[{peer}] pins: {' '.join(PEERS[peer])}", flush=True)
    try:
        if not venv_python(peer).exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(target)
        pip(venv_python(peer), *PEERS[peer])
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"[{peer}] INSTALL FAILED: {exc}; removing {target}", flush=True)
        shutil.rmtree(target, ignore_errors=True)
        return False
    print(f"[{peer}] installed: {versions(venv_python(peer), REPORT[peer])}", flush=True)
    return True


def install_asyncjobs(recreate: bool) -> bool:
    """asyncjobs gets a venv of its own too, with only its runtime dependencies (what
    `pip install asyncjobs-redis` installs), like every peer: the dev environment also holds
    optional packages (OpenTelemetry...) that would inflate the worker's memory."""
    target = VENVS / "asyncjobs"
    if recreate and target.exists():
        shutil.rmtree(target)
    repo = Path(__file__).resolve().parent.parent
    try:
        if not venv_python("asyncjobs").exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(target)
        pip(venv_python("asyncjobs"), "-e", str(repo))
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"[asyncjobs] INSTALL FAILED: {exc}", flush=True)
        return False
    names = ["asyncjobs-redis", "redis", "hiredis", "msgspec", "uvloop", "anyio"]
    print(f"[asyncjobs] installed: {versions(venv_python('asyncjobs'), names)}", flush=True)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated subset of: " + ",".join(PEERS)
    )
    ap.add_argument("--recreate", action="store_true", help="delete and rebuild existing venvs")
    ap.add_argument("--harness-only", action="store_true", help="only install the harness extras")
    ap.add_argument(
        "--no-harness", action="store_true", help="do not touch the invoking Python's env"
    )
    args = ap.parse_args()
    if not args.no_harness:
        print(f"[harness] installing {' '.join(HARNESS)} into {sys.executable}", flush=True)
        pip(sys.executable, *HARNESS)
        print(f"[harness] installed: {versions(sys.executable, HARNESS)}", flush=True)
    if args.harness_only:
        return 0
    failed = [] if install_asyncjobs(args.recreate) else ["asyncjobs"]
    for peer in [p.strip() for p in args.peers.split(",") if p.strip()]:
        if peer not in PEERS:
            print(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
            failed.append(peer)
        elif not install_peer(peer, args.recreate):
            failed.append(peer)
    if failed:
        print("FAILED:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
