"""Issue 17: the GUI thread never stalls at the drop. The dataset import, the token view and the
memory estimate's token lengths load the tokenizer (transformers, tokenizers, jinja2, mlx-lm), whose
first import holds Python's GIL for long stretches; they now run in worker processes.

The window runs in a fresh process here (the test process has long since imported everything), so
its sys.modules says what the window itself loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["tokenizers", "transformers", "jinja2", "mlx", "mlx_lm"]

SCRIPT = r"""
import json, sys
from pathlib import Path

import app  # the PySide6/Python 3.11 workaround, before any Qt call
from PySide6.QtWidgets import QApplication
from PySide6.QtTest import QTest

from app.pages.data import DataPage
from app.services import data_lengths, sample_dataset
from engine.config import RunConfig

model, heavy = sys.argv[1], sys.argv[2].split(",")
qapp = QApplication([])
page = DataPage()
page.preferred_model = model
page.show()
reports, failures = [], []
page.sig_report_ready.connect(reports.append)
page.sig_import_failed.connect(failures.append)


def wait(predicate, seconds=120):
    for _ in range(seconds * 20):
        if predicate():
            return True
        QTest.qWait(50)
    return False


out = {"loaded_before": sorted(m for m in heavy if m in sys.modules)}
page.open_path(sample_dataset())
out["worker_pid"] = page.job.pid if page.job is not None else None
wait(lambda: reports or failures)
out["worker_pid"] = out["worker_pid"] or (page.job.pid if page.job is not None else None)
out["failures"] = failures
report = reports[0] if reports else None
out["splits"] = report.splits if report else None
out["measured_with"] = report.tokens.model if report and report.tokens else None
page.load_token_view()
wait(lambda: "tokens" in page.token_info.text() or "Tokenizing" not in page.token_info.text())
out["token_info"] = page.token_info.text()
cfg = RunConfig()
cfg.model.path = model
cfg.data.path = str(sample_dataset())
cfg.data.max_seq_length = 128
lengths = data_lengths(Path(model), cfg)
out["lengths"] = len(lengths) if lengths else lengths
out["loaded_after"] = sorted(m for m in heavy if m in sys.modules)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_import_token_view_and_lengths_load_no_tokenizer_in_the_window(tiny_chat_model, lathe_home):
    """Before: the Data page imported on a thread of the window's process (app.data_import
    .run_import), so dropping the sample loaded tokenizers, transformers and jinja2 there (a 309 ms
    stall in the real window); the token view and the fit estimate's lengths did the same. Now the
    same report, token view and lengths come from worker processes and none of those modules is
    ever loaded by the window."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_chat_model), ",".join(HEAVY)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT ") :])
    assert out["failures"] == [], out
    # The same report as before: 288 training examples with 5% held out as a test split.
    splits = out["splits"]
    assert splits["train"] + splits.get("test", 0) == 288 and splits.get("test", 0) > 0, out
    assert out["measured_with"] == str(tiny_chat_model), out
    assert out["worker_pid"] and out["worker_pid"] != os.getpid(), out
    assert "tokens" in out["token_info"] and "trained" in out["token_info"], out
    assert out["lengths"] and out["lengths"] > 200, out
    assert out["loaded_before"] == [] and out["loaded_after"] == [], out
