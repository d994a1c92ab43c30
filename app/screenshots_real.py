"""`python -m app.screenshots_real`: screenshots of every page from the real window, not offscreen.

Each size gets its own X server (Xvfb) with a window manager (openbox); the app runs on it through
Qt's xcb platform, maximised, in a workspace with real content, and `import -window root` (ImageMagick)
captures the screen, window frame included. The workspace is prepared with the engine's own command
line: the bundled sample dataset imported, stories260K imported into the library, and a short real
run trained with `python -m engine train`. In the window, the Data page imports the sample, the Train
page trains a second real run (captured while it trains, then stopped), and the Chat page loads the
first run's adapter and gets a real reply.

    python -m app.screenshots_real                       # docs/screenshots/<page>-<W>x<H>.png
    python -m app.screenshots_real --sizes 1024x640 --pages train,chat
    python -m app.screenshots_real --workspace /tmp/ws   # reuse a prepared workspace (faster)

Needs Linux with Xvfb, openbox, ImageMagick and the libraries of Qt's xcb plugin (Debian: apt-get
install xvfb openbox imagemagick libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1), and the stories260K
model (--model, else the shared test model). A development tool: it never touches the user's
workspace. Training on a loaded 2-core machine is slow: preparing takes minutes, and so does each
size's Train picture; --workspace keeps the prepared workspace for the next time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAGES = ("welcome", "models", "data", "train", "chat", "runs")
SIZES = ("1440x900", "1024x640")
ROOT = Path(__file__).resolve().parents[1]
PREPARED = ".screenshots-prepared.json"


def find_model(arg: str | None) -> Path:
    if arg:
        return Path(arg).expanduser().resolve()
    from engine.workspace import shared_stories_model

    found = shared_stories_model()
    for candidate in (found, ROOT.parent / "shared" / "models" / "stories260K"):
        if candidate is not None and (Path(candidate) / "model.safetensors").exists():
            return Path(candidate).resolve()
    for parent in ROOT.parents:  # a git worktree below the checkout that holds ../shared
        candidate = parent / "shared" / "models" / "stories260K"
        if (candidate / "model.safetensors").exists():
            return candidate.resolve()
    sys.exit("stories260K not found: pass --model /path/to/stories260K")


def engine(workspace: Path, *args: str) -> dict | list | None:
    """Runs the engine with ARGS and --json in the screenshot workspace; the parsed JSON output."""
    env = dict(os.environ, LATHE_HOME=str(workspace), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "engine", *args]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    text = out.stdout.strip()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def prepare(workspace: Path, model: Path) -> dict:
    """Real content for the pictures, made once per workspace (a marker file says it is done)."""
    marker = workspace / PREPARED
    if marker.exists():
        return json.loads(marker.read_text(encoding="utf-8"))
    workspace.mkdir(parents=True, exist_ok=True)
    sample = ROOT / "resources" / "samples" / "bank-support"
    print("preparing: importing the sample dataset and the model", flush=True)
    report = engine(workspace, "data", "import", str(sample), "--model", str(model), "--json")
    dataset = (report or {}).get("dataset_path") or str(sample)
    engine(workspace, "models", "import", str(model), "--json")
    print("preparing: training a short real run on stories260K", flush=True)
    t0 = time.time()
    engine(
        workspace,
        "train",
        "--model",
        str(model),
        "--data",
        str(dataset),
        "--name",
        "bank-support",
        "--iters",
        "120",
        "--batch-size",
        "8",
        "--learning-rate",
        "5e-4",
        "--max-seq-length",
        "512",
        "--num-layers",
        "-1",
        "--lora-rank",
        "16",
        "--steps-per-eval",
        "20",
        "--save-every",
        "40",
    )
    info = {"model": str(model), "dataset": str(dataset), "train_seconds": round(time.time() - t0)}
    marker.write_text(json.dumps(info), encoding="utf-8")
    return info


# ---------------------------------------------------------------------------------------------
# The X server side


def start_display(size: str) -> tuple[str, list[subprocess.Popen]]:
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", f"{size}x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    number = b""
    while not number.endswith(b"\n"):
        chunk = os.read(read, 16)
        if not chunk:
            break
        number += chunk
    os.close(read)
    display = f":{number.decode().strip()}"
    wm = subprocess.Popen(
        ["openbox"],
        env=dict(os.environ, DISPLAY=display),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.8)
    return display, [wm, xvfb]


def shoot_size(size: str, pages: list[str], out: Path, workspace: Path, info: dict) -> int:
    display, procs = start_display(size)
    try:
        env = dict(
            os.environ,
            DISPLAY=display,
            QT_QPA_PLATFORM="xcb",
            LATHE_HOME=str(workspace),
            PYTHONPATH=str(ROOT),
        )
        env.pop("QT_SCALE_FACTOR", None)
        cmd = [sys.executable, "-m", "app.screenshots_real", "--child", size, "--out", str(out)]
        cmd += ["--pages", ",".join(pages), "--info", json.dumps(info)]
        return subprocess.run(cmd, env=env, cwd=ROOT, check=False).returncode
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


# ---------------------------------------------------------------------------------------------
# The app side (runs on the X server, in the child process)


def _child(size: str, pages: list[str], out: Path, info: dict) -> int:
    from PySide6.QtCore import QThreadPool
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    import app  # noqa: F401 - the PySide6 workaround

    qapp = QApplication(["lathe"])
    qapp.setApplicationName("Lathe")
    qapp.setApplicationDisplayName("Lathe")
    from app.theme import apply_theme
    from app.window import MainWindow, icon_path

    apply_theme(qapp)
    qapp.setWindowIcon(QIcon(str(icon_path())))
    pool = QThreadPool.globalInstance()

    def wait(cond, timeout: float = 60.0) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            qapp.processEvents()
            if cond():
                return True
            time.sleep(0.02)
        return False

    def settle(seconds: float = 0.6) -> None:
        wait(lambda: False, seconds)

    def shoot(page: str) -> None:
        settle()
        file = out / f"{page}-{size}.png"
        subprocess.run(["import", "-window", "root", str(file)], check=True)
        print(f"saved {file}", flush=True)

    window = MainWindow(remember=False)
    window.showMaximized()
    wait(lambda: window.isActiveWindow() or window.isVisible(), 10)
    window.load_initial_data()
    wait(lambda: pool.activeThreadCount() == 0, 30)
    settle(1.0)
    model = info["model"]
    for page in pages:
        if page == "welcome":
            window.show_page("welcome")
        elif page == "models":
            window.show_page("models")
            wait(lambda: window.models.library and window.models.recommended, 20)
        elif page == "data":
            from app.services import sample_dataset

            window.open_path(sample_dataset())
            wait(lambda: window.data.report is not None or window.data.error.isVisible(), 120)
            wait(lambda: pool.activeThreadCount() == 0, 20)
        elif page == "train":
            _train_live(window, model, info["dataset"], wait)
        elif page == "chat":
            _chat(window, wait)
        elif page == "runs":
            window.show_page("runs")
            window.runs.refresh()
            wait(lambda: window.runs.rows, 20)
            wait(lambda: window.runs.chart.point_count > 0, 20)
        shoot(page)
    if window.controller.active:
        window.controller.stop()
        wait(lambda: not window.controller.active, 60)
    window.quit_confirmed = True
    window.close()
    wait(lambda: pool.activeThreadCount() == 0, 20)
    sys.stdout.flush()
    os._exit(0)  # MLX ran on worker threads: skip its exit-time destructors (see app.__main__)


def _train_live(window, model: str, dataset: str, wait) -> None:
    """A real run started from the Train page, captured while it trains."""
    train = window.train
    window.show_page("train")
    settings = train.settings
    settings.model.setEditText(model)
    settings.data.setEditText(dataset)
    settings.name.setText("bank-support")
    settings.set_values(
        {
            "training.iters": 300,
            "training.batch_size": 8,
            "training.learning_rate": 5e-4,
            "data.max_seq_length": 512,
            "lora.rank": 16,
            "training.steps_per_eval": 10,
            "training.steps_per_report": 2,
        }
    )
    wait(lambda: train.fit_report is not None, 30)
    train.start()
    # Enough steps for a curve with validation points; a loaded machine trains slowly.
    wait(lambda: (window.controller.last_progress or {}).get("step", 0) >= 30, 300)
    wait(lambda: False, 0.5)


def _chat(window, wait) -> None:
    """The first run's adapter, loaded in the window, and a real reply."""
    from engine.runs import list_runs

    chat = window.chat
    runs = [r for r in list_runs() if r.adapter_path is not None]
    if window.controller.active:  # the Train picture's run: stopped, so no picture says "training"
        window.controller.stop()
        wait(lambda: not window.controller.active, 120)
    window.show_page("chat")
    if not runs:
        return
    run = sorted(runs, key=lambda r: r.id)[0]
    window.open_chat(str(run.path))
    wait(lambda: chat.controller.model is not None or chat.error.isVisible(), 90)
    chat.temperature.setValue(0.0)
    chat.max_tokens.setValue(48)
    chat.send("What does a transfer to another bank cost?")
    wait(lambda: chat.controller.busy, 5)
    wait(lambda: not chat.controller.busy, 90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--pages", default=",".join(PAGES))
    p.add_argument("--workspace", help="prepared workspace to reuse (made when missing)")
    p.add_argument("--model", help="stories260K folder")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--info", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    pages = [x for x in args.pages.split(",") if x]
    out = Path(args.out)
    if args.child:
        return _child(args.child, pages, out, json.loads(args.info))
    for tool in ("Xvfb", "openbox", "import"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install xvfb openbox imagemagick)")
    missing = _xcb_libraries_missing()
    if missing:
        sys.exit(
            f"Qt's xcb plugin needs {', '.join(missing)} (apt-get install {' '.join(missing)})"
        )
    out.mkdir(parents=True, exist_ok=True)
    model = find_model(args.model)
    workspace = (
        Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="lathe-shots-"))
    )
    info = prepare(workspace, model)
    code = 0
    for size in [s for s in args.sizes.split(",") if s]:
        # Each size starts from the prepared workspace (runs the window trains are removed).
        code |= shoot_size(size, pages, out, workspace, info)
        _forget_window_runs(workspace)
    if not args.workspace:
        shutil.rmtree(workspace, ignore_errors=True)
    return code


def _xcb_libraries_missing() -> list[str]:
    """Debian packages of the libraries Qt's xcb platform plugin loads that are not installed."""
    import ctypes

    needed = {
        "libxcb-cursor.so.0": "libxcb-cursor0",
        "libxcb-icccm.so.4": "libxcb-icccm4",
        "libxcb-keysyms.so.1": "libxcb-keysyms1",
    }
    missing = []
    for lib, package in needed.items():
        try:
            ctypes.CDLL(lib)
        except OSError:
            missing.append(package)
    return missing


def _forget_window_runs(workspace: Path) -> None:
    runs = sorted((workspace / "runs").glob("*"))
    for run in runs[1:]:
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
