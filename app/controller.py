"""TrainingController: owns the engine worker process of one run and re-emits its events as signals.

The app never trains in its own process (DESIGN.md). It starts `python -m engine train --config
RUN/config.yaml --events` (or `--resume RUN`) with QProcess, parses the JSON lines on stdout in one
place (`_on_process_stdout`) and re-emits them as typed signals. Stopping is a request (`stop` on
stdin), then a bounded wait for the checkpoint, then terminate, then kill.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

IDLE, STARTING, RUNNING, STOPPING = "idle", "starting", "running", "stopping"
# Final states a run can end in, as the app shows them. A worker that ended without finishing
# (killed, crashed) leaves an `interrupted` run: the word engine.runs and the Runs page use too.
COMPLETED, STOPPED, FAILED, INTERRUPTED = "completed", "stopped", "failed", "interrupted"

STOP_WAIT_MS = 60_000  # how long a requested stop may take (a checkpoint of a big adapter)
TERMINATE_WAIT_MS = 5_000  # after SIGTERM (the worker checkpoints on it too), before SIGKILL
LOG_TAIL = 200
WORKER_NICE = 5  # workers' CPU priority below the window's (nice increment)
READ_CHUNK = 64 * 1024


def keep_awake_command(pid: int, platform: str | None = None) -> list[str] | None:
    """The command that keeps the Mac awake while `pid` lives (macOS only; None elsewhere)."""
    platform = platform or sys.platform
    if platform != "darwin" or not pid:
        return None
    exe = shutil.which("caffeinate") or "/usr/bin/caffeinate"
    return [exe, "-i", "-w", str(int(pid))]


def engine_command(*args: str, python: str | None = None) -> tuple[str, list[str]]:
    """(program, arguments) that run `lathe-engine ARGS...` in a process of its own."""
    python = python or sys.executable
    # In the built Lathe.app the executable is Lathe itself, which runs the engine with --engine
    # (build_macos.py's launcher); from source it is Python with `-m engine`.
    engine = ["--engine"] if getattr(sys, "frozen", False) else ["-m", "engine"]
    return python, [*engine, *args]


def worker_env(base: dict[str, str]) -> dict[str, str]:
    """The environment of an engine worker process, from `base` (the app's): unbuffered UTF-8
    output, a lower CPU priority than the window, and on Linux OpenBLAS preloaded and glibc's
    malloc set up for MLX's CPU backend (engine.platform.cpu_worker_env)."""
    from engine.platform import cpu_worker_env

    env = dict(base)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    # Below the window's CPU priority (engine.cli.lower_priority): the window stays responsive
    # while a worker keeps the cores busy.
    env.setdefault("LATHE_WORKER_NICE", str(WORKER_NICE))
    env.update(cpu_worker_env(env))
    return env


def worker_cwd() -> str | None:
    """The working folder of a worker run from source (the repository root), else None."""
    root = Path(__file__).resolve().parents[1]
    return str(root) if (root / "engine").is_dir() else None


def prepare_worker(proc: QProcess) -> None:
    """Environment and working folder of an engine worker process (training and every job)."""
    system = QProcessEnvironment.systemEnvironment()
    env = QProcessEnvironment()
    for key, value in worker_env({k: system.value(k) for k in system.keys()}).items():
        env.insert(key, value)
    proc.setProcessEnvironment(env)
    if worker_cwd():
        proc.setWorkingDirectory(worker_cwd())
    proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)


def worker_process(owner: QObject, *, stdout, stderr, finished, error, started) -> QProcess:
    """A QProcess for an engine worker (prepare_worker's environment) with its signals connected:
    the one place the training controller and every job (app.jobs) make their processes. The
    caller keeps it, then calls start(program, args)."""
    proc = QProcess(owner)
    prepare_worker(proc)
    proc.readyReadStandardOutput.connect(stdout)
    proc.readyReadStandardError.connect(stderr)
    proc.finished.connect(finished)
    proc.errorOccurred.connect(error)
    proc.started.connect(started)
    return proc


HOSTS_FILE = "hosts.yaml"  # in a run folder: the Macs a multi-Mac run trains across


def worker_command(
    config_path: Path | None = None,
    resume: Path | None = None,
    python: str | None = None,
    hosts: Path | None = None,
    force: bool = False,
) -> tuple[str, list[str]]:
    """(program, arguments) of the engine worker for a new run or a resumed one.

    `hosts`: a hosts.yaml; the engine then starts the run on every listed Mac with mlx.launch and
    relays rank 0's events on stdout like a local run. `force`: start even when the memory check
    predicts that the run will not fit."""
    if resume is not None:
        python, args = engine_command("train", "--resume", str(resume), "--events", python=python)
    else:
        python, args = engine_command(
            "train", "--config", str(config_path), "--events", python=python
        )
    if force:
        args.append("--force")
    if hosts is not None:
        args += ["--hosts", str(hosts)]
    return python, args


def hosts_yaml(hosts: list) -> str:
    """hosts.yaml (engine.training.distributed.read_hosts reads it) for a list of Host entries."""
    import yaml

    return yaml.safe_dump([{"ssh": h.ssh, "ips": list(h.ips)} for h in hosts], sort_keys=False)


class TrainingController(QObject):
    """One training worker at a time. Widgets connect to the `sig_*` signals and never touch
    the process."""

    sig_state_changed = Signal(str)  # idle / starting / running / stopping
    sig_started = Signal(dict)  # the `started` event
    sig_progress = Signal(dict)
    sig_eval = Signal(dict)
    sig_checkpoint = Signal(dict)
    sig_log = Signal(str, str)  # level, message (engine log events and stderr lines)
    sig_error = Signal(dict)  # the `error` event
    sig_finished = Signal(str, dict)  # final state (completed/stopped/failed/interrupted), details

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.process: QProcess | None = None
        self._awake: QProcess | None = None
        self.state = IDLE
        self.run_dir: Path | None = None
        self.run_id: str | None = None
        self.total_steps = 0
        self.last_progress: dict | None = None
        self.last_checkpoint: dict | None = None
        self.error_event: dict | None = None
        self.finished_event: dict | None = None
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)
        self.command: list[str] = []  # the worker's command line, program first
        self.events_seen = 0
        self.keep_awake = True  # macOS: caffeinate while the worker runs
        self.stop_wait_ms = STOP_WAIT_MS
        self.terminate_wait_ms = TERMINATE_WAIT_MS
        self._buffer = b""
        self._more_scheduled = False
        self._stop_timer = QTimer(self)
        self._stop_timer.setSingleShot(True)
        self._stop_timer.timeout.connect(self._on_stop_timer_timeout)
        self._escalation = 0

    # -- public API ---------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state != IDLE

    @property
    def pid(self) -> int:
        return int(self.process.processId()) if self.process is not None else 0

    def start_config(self, config, hosts: list | None = None) -> Path:
        """Create the run folder for `config` (engine.runs.create_run) and start training in it.

        With `hosts` (engine.training.distributed.Host entries) the run trains across those Macs: their list
        is written to RUN/hosts.yaml and passed to the worker as `--hosts`."""
        from engine.runs import create_run

        if self.active:
            raise RuntimeError("A run is already in progress; stop it first.")
        config.validate()
        run_dir = create_run(config)
        hosts_path = None
        if hosts:
            from engine.workspace import write_text_atomic

            hosts_path = run_dir / HOSTS_FILE
            write_text_atomic(hosts_path, hosts_yaml(hosts))
        self._launch(
            *worker_command(config_path=run_dir / "config.yaml", hosts=hosts_path), run_dir=run_dir
        )
        return run_dir

    def resume(self, run_dir: Path, force: bool = False) -> None:
        """Continue a stopped, failed or interrupted run from its newest checkpoint (across the same
        Macs when it was a multi-Mac run; `force` skips the memory check)."""
        run_dir = Path(run_dir)
        hosts = run_dir / HOSTS_FILE
        self._launch(
            *worker_command(resume=run_dir, hosts=hosts if hosts.is_file() else None, force=force),
            run_dir=run_dir,
        )

    def start_command(self, program: str, args: list[str], run_dir: Path | None = None) -> None:
        """Start any process that speaks the events protocol (benchmarks replay recorded runs)."""
        self._launch(program, args, run_dir=run_dir)

    def stop(self) -> None:
        """Ask the worker to stop at the next step with a checkpoint; escalate if it does not."""
        if self.process is None or self.state in (IDLE, STOPPING):
            return
        self._set_state(STOPPING)
        self.process.write(b"stop\n")
        self._escalation = 0
        self._stop_timer.start(self.stop_wait_ms)

    def kill(self) -> None:
        """End the worker now (quitting without waiting). Its status file reads as interrupted."""
        if self.process is not None:
            self.process.kill()
            self.process.waitForFinished(3000)

    # -- process ------------------------------------------------------------------------------
    def _launch(self, program: str, args: list[str], run_dir: Path | None) -> None:
        if self.active:
            raise RuntimeError("A run is already in progress; stop it first.")
        self.run_dir = Path(run_dir) if run_dir else None
        self.run_id = self.run_dir.name if self.run_dir else None
        self.total_steps = 0
        self.last_progress = self.last_checkpoint = self.error_event = self.finished_event = None
        self.tail.clear()
        self.events_seen = 0
        self._buffer = b""
        self.command = [program, *args]
        self._set_state(STARTING)
        self.process = worker_process(
            self,
            stdout=self._on_process_stdout,
            stderr=self._on_process_stderr,
            finished=self._on_process_finished,
            error=self._on_process_error,
            started=self._on_process_started,
        )
        self.process.start(program, args)

    def _on_process_started(self) -> None:
        if self.state == STARTING:
            self._set_state(RUNNING)
        cmd = keep_awake_command(self.pid) if self.keep_awake else None
        if cmd:
            self._awake = QProcess(self)
            self._awake.start(cmd[0], cmd[1:])

    def _on_process_stdout(self) -> None:
        if self.process is None:
            return
        # Parse at most READ_CHUNK bytes per turn of the event loop, so a worker that floods
        # stdout never holds the GUI thread for long; the rest is read on the next turn.
        self._buffer += bytes(self.process.read(READ_CHUNK))
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            self.handle_line(raw.decode("utf-8", "replace"))
        if (
            self.process is not None
            and self.process.bytesAvailable() > 0
            and not self._more_scheduled
        ):
            self._more_scheduled = True
            QTimer.singleShot(0, self._on_more_stdout)

    def _on_more_stdout(self) -> None:
        self._more_scheduled = False
        self._on_process_stdout()

    def _drain_stdout(self) -> None:
        while self.process is not None and self.process.bytesAvailable() > 0:
            self._on_process_stdout()

    def handle_line(self, line: str) -> None:
        """One line of worker stdout: an event, or plain text that goes to the log."""
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self.tail.append(line)
            self.sig_log.emit("output", line)
            return
        self.events_seen += 1
        kind = event["event"]
        if kind == "progress":
            self.last_progress = event
            self.sig_progress.emit(event)
        elif kind == "eval":
            self.sig_eval.emit(event)
        elif kind == "started":
            self.total_steps = int(event.get("total_steps") or 0)
            if event.get("run_dir"):
                self.run_dir = Path(event["run_dir"])
                self.run_id = event.get("run_id") or self.run_dir.name
            self.sig_started.emit(event)
        elif kind == "checkpoint":
            self.last_checkpoint = event
            self.sig_checkpoint.emit(event)
        elif kind == "log":
            message = str(event.get("message", ""))
            self.tail.append(message)
            self.sig_log.emit(str(event.get("level", "info")), message)
        elif kind == "error":
            self.error_event = event
            self.tail.append(f"error: {event.get('message', '')}")
            self.sig_error.emit(event)
        elif kind == "finished":
            self.finished_event = event

    def _on_process_stderr(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self.tail.append(line)
                self.sig_log.emit("stderr", line)

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.tail.append(f"The training process could not start: {self.process.errorString()}")
            self._finish(INTERRUPTED, exit_code=-1)

    def _on_process_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._drain_stdout()
        if self._buffer.strip():
            self.handle_line(self._buffer.decode("utf-8", "replace"))
            self._buffer = b""
        self._on_process_stderr()
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        status = (self.finished_event or {}).get("status")
        if status in (COMPLETED, STOPPED) and not crashed:
            final = status
        elif status == FAILED:
            final = FAILED
        else:
            final = INTERRUPTED
        self._finish(final, exit_code=-1 if crashed else exit_code)

    def _finish(self, final: str, exit_code: int) -> None:
        if self.state == IDLE:
            return
        self._stop_timer.stop()
        if self._awake is not None:
            self._awake.kill()
            self._awake = None
        details = {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "run_id": self.run_id,
            "exit_code": exit_code,
            "finished": self.finished_event,
            "error": self.error_event,
            "last_progress": self.last_progress,
            "last_checkpoint": self.last_checkpoint,
            "tail": list(self.tail)[-20:],
        }
        if final == INTERRUPTED and self.run_dir is not None:
            details["interrupted"] = _mark_interrupted(self.run_dir)
        proc, self.process = self.process, None
        if proc is not None:
            proc.deleteLater()
        self._set_state(IDLE)
        self.sig_finished.emit(final, details)

    def _on_stop_timer_timeout(self) -> None:
        if self.process is None:
            return
        if self._escalation == 0:
            self._escalation = 1
            self.tail.append("The worker did not stop in time; asking it to terminate.")
            self.process.terminate()
            self._stop_timer.start(self.terminate_wait_ms)
        else:
            self.tail.append("The worker did not terminate; killing it.")
            self.process.kill()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.sig_state_changed.emit(state)


def _mark_interrupted(run_dir: Path) -> bool:
    """Persist `interrupted` for a run whose worker died without finishing."""
    try:
        from engine.runs import mark_interrupted

        return mark_interrupted(run_dir).state == "interrupted"
    except Exception:  # noqa: BLE001 - a missing/damaged folder must not break the crash report
        return False


def describe_crash(details: dict) -> str:
    """What the user reads when the worker ended without `finished`."""
    err = details.get("error")
    if err:
        text = str(err.get("message", "The training process reported an error."))
        if err.get("hint"):
            text += f"\nWhat to do: {err['hint']}"
        return text
    code = details.get("exit_code")
    if code is not None and code < 0:
        head = "The training process was killed or crashed."
    else:
        head = f"The training process ended unexpectedly (exit code {code})."
    tail = [t for t in details.get("tail", []) if t.strip()][-8:]
    if tail:
        head += "\nLast output:\n" + "\n".join(tail)
    return head
