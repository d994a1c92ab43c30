"""Inspecting a big dataset: time and peak memory for a ~100 MB, 100,000-example chat JSONL.

Generates the file in a temporary folder (streamed to disk, never held in memory), then runs
`python -m engine data inspect FILE --model stories260K --json` as a separate process, the way the
app runs it, and reports wall time and peak resident memory: of the engine process itself and of
the engine plus its tokenizer worker processes together (sampled from /proc every 50 ms on Linux).

    python bench/data_import.py                     # 100,000 examples, the stories260K tokenizer
    python bench/data_import.py --examples 20000 --import --json

Targets (the 2-core CI machine): under 60 s and under 1 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
WORDS = (
    "account fee transfer card bank money day euro branch limit app help balance statement "
    "international payment cancel online password security loan rate mortgage savings"
).split()


def generate(path: Path, n: int, seed: int = 0) -> int:
    """n chat examples of about 1 KB each (system, user, assistant); returns the file size."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 45)))
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(90, 150)))
            messages = [
                {"role": "user", "content": f"#{i} {q}?"},
                {"role": "assistant", "content": a + "."},
            ]
            if i % 3 == 0:
                messages.insert(
                    0, {"role": "system", "content": "You are the bank's support assistant."}
                )
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path.stat().st_size


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (Linux /proc); 0 where unavailable."""
    total = 0
    try:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
        stack = [pid]
        while stack:
            p = stack.pop()
            stack += children.get(p, [])
            try:
                with open(f"/proc/{p}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                pass
    except OSError:
        return 0
    return total


def run(cmd: list[str], env: dict) -> tuple[float, float, int, int, str]:
    """(wall seconds, CPU seconds of the process and its workers, peak RSS of the process, peak RSS
    of its tree, stdout). CPU time says what the work costs even on a machine others share."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak_tree = 0
    done = threading.Event()

    def sample():
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, _tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"engine failed ({proc.returncode}): {err.strip()}")
    # ru_maxrss of children: the largest single child process (the engine); KB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return seconds, cpu, after.ru_maxrss * scale, peak_tree, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--model", default=str(STORIES), help="Model folder for the tokenizer.")
    parser.add_argument(
        "--import",
        dest="do_import",
        action="store_true",
        help="Also time `data import` (into a temporary workspace).",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lathe-bench-data-") as tmp:
        data = Path(tmp) / "chat.jsonl"
        t0 = time.perf_counter()
        size = generate(data, args.examples)
        gen_s = time.perf_counter() - t0
        env = dict(os.environ, LATHE_HOME=str(Path(tmp) / "home"))
        results = {
            "examples": args.examples,
            "file_mb": round(size / 1e6, 1),
            "generate_s": round(gen_s, 1),
            "cpus": os.cpu_count(),
            "machine": f"{platform.system()} {platform.machine()}",
        }
        runs = [("inspect", ["data", "inspect", str(data), "--model", args.model, "--json"])]
        if args.do_import:
            runs.append(("import", ["data", "import", str(data), "--model", args.model, "--json"]))
        for name, cmd in runs:
            seconds, cpu, peak_proc, peak_tree, out = run(
                [sys.executable, "-m", "engine", *cmd], env
            )
            report = json.loads(out)
            tok = report["tokens"]
            results[name] = {
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu, 1),
                "load_average_1min": round(os.getloadavg()[0], 1),
                "examples_per_s": round(report["kept"] / seconds),
                "peak_rss_engine_mb": round(peak_proc / 1e6),
                "peak_rss_with_workers_mb": round(peak_tree / 1e6),
                "kept": report["kept"],
                "splits": report["splits"],
                "trained_tokens": sum(s["trained_tokens"] for s in tok["splits"].values()),
                "median_length": tok["splits"]["train"]["median"],
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{results['examples']:,} examples, {results['file_mb']} MB (generated in {results['generate_s']} s), "
        f"{results['cpus']} CPUs, {results['machine']}"
    )
    for name, _cmd in runs:
        r = results[name]
        ok = (
            "OK"
            if r["seconds"] < 60
            and max(r["peak_rss_engine_mb"], r["peak_rss_with_workers_mb"]) < 1000
            else "MISSED"
        )
        print(
            f"data {name}: {r['seconds']} s ({r['examples_per_s']:,} examples/s; {r['cpu_seconds']} CPU-s, "
            f"load average {r['load_average_1min']}), peak RSS {r['peak_rss_engine_mb']} MB "
            f"(engine) / {r['peak_rss_with_workers_mb']} MB (engine + workers); kept {r['kept']:,}, "
            f"{r['trained_tokens']:,} trained tokens, median length {r['median_length']:g}  [{ok}: <60 s, <1 GB]"
        )


if __name__ == "__main__":
    main()
