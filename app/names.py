"""Human names for what the window shows: runs, datasets, models and paths.

Workspace ids carry a timestamp and a random suffix (`20261130-133435-bank-support-a027`); the
window shows the name inside them ("bank-support"). Plain functions (no Qt; worker threads use
them too); app.theme middle-elides long paths with the whole path in a tooltip. Every page uses
these, so a name reads the same everywhere.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

# engine.workspace.new_id: YYYYmmdd-HHMMSS-<name>-<4 hex>
_ID = re.compile(r"^\d{8}-\d{6}-(?P<name>.+)-[0-9a-f]{4}$")


def id_name(text: str) -> str:
    """The human part of a workspace id (`20261130-133435-bank-support-a027` -> `bank-support`);
    anything that is not such an id comes back unchanged."""
    m = _ID.match(text or "")
    return m.group("name") if m else (text or "")


def path_name(path: str | Path) -> str:
    """The last part of a path or a Hugging Face repo id, without a workspace id's stamp."""
    text = str(path or "").rstrip("/\\")
    if not text:
        return ""
    return id_name(Path(text).name or text)


def dataset_name(path: str | Path) -> str:
    """A dataset's name: an imported dataset's folder names it; a file is named without its
    extension (`support.jsonl` -> `support`)."""
    p = Path(str(path or ""))
    if p.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv", ".txt", ".md", ".parquet", ".zip"):
        name = p.stem
        # train.jsonl inside a folder: the folder is the dataset
        if name in ("train", "valid", "test") and p.parent.name:
            return path_name(p.parent)
        return id_name(name)
    return path_name(p)


def model_name(path_or_repo: str | Path) -> str:
    """A model's name: the folder name, or the repo id's name part (`mlx-community/X` -> `X`)."""
    return path_name(path_or_repo)


def run_name(name: str, run_id: str, dataset: str = "") -> str:
    """A run's name: the name it was given, else the dataset's, else the human part of its id."""
    return (name or "").strip() or (dataset_name(dataset) if dataset else "") or id_name(run_id)


def run_title(name: str, run_id: str, dataset: str = "", model: str = "") -> str:
    """`bank-support · stories260K`: the run's name and the model it tunes, on one line."""
    title = run_name(name, run_id, dataset)
    m = model_name(model) if model else ""
    return f"{title} · {m}" if m and m != title else title


_ID_IN_TEXT = re.compile(r"\b\d{8}-\d{6}-([A-Za-z0-9._-]+?)-[0-9a-f]{4}\b")


def humanize_ids(text: str) -> str:
    """Every workspace id inside `text` replaced by its name ("run 2026…-bank-support-a027 ·
    final adapter" -> "run bank-support · final adapter")."""
    return _ID_IN_TEXT.sub(lambda m: m.group(1), text or "")


def id_time(run_id: str, today: date | None = None) -> str:
    """When a workspace id was made: `15:51` today, else `30 Nov 15:51` ("" for other names)."""
    m = re.match(r"^(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})\d{2}-", run_id or "")
    if not m:
        return ""
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    year, month, day, hour, minute = m.groups()
    if (int(year), int(month), int(day)) == (today or date.today()).timetuple()[:3]:
        return f"{hour}:{minute}"
    return f"{int(day)} {months[int(month) - 1]} {hour}:{minute}"


def run_label(name: str, run_id: str, dataset: str = "", today: date | None = None) -> str:
    """A run in a list: its name and when it started (`bank-support · 30 Nov 15:51`, only the
    time for today's runs), so two runs of one name stay apart."""
    when = id_time(run_id, today)
    title = run_name(name, run_id, dataset)
    return f"{title} · {when}" if when else title
