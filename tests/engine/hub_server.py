"""A local stand-in for the Hugging Face Hub's model endpoints, for download tests.

Serves, on 127.0.0.1, what huggingface_hub asks for when it downloads a model:
- GET  /api/models/{repo}[/revision/{rev}]  repo info with `sha` and `siblings` (sizes, LFS sha256)
- HEAD /{repo}/resolve/{rev}/{file}         ETag, X-Repo-Commit, Content-Length, Accept-Ranges
- GET  /{repo}/resolve/{rev}/{file}         the bytes, honouring `Range: bytes=N-` with 206
Gated repos answer 401 with `X-Error-Code: GatedRepo`, unknown ones 404 `RepoNotFound`.
`drop_once` makes the first GET of a file send half its bytes and then close the connection;
`chunk_delay` slows the body down so a test can cancel mid-file. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]
    gated: bool = False


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    drop_once: set[tuple[str, str]] = field(default_factory=set)
    chunk_delay: float = 0.0
    any_revision: bool = False  # answer every revision name (a hostile or careless server)
    chunk_size: int = 16 * 1024
    log: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_folder(
        self,
        repo_id: str,
        folder: Path,
        *,
        extra: dict[str, bytes] | None = None,
        gated: bool = False,
    ) -> Repo:
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        files.update(extra or {})
        digest = hashlib.sha1(
            repo_id.encode() + b"".join(files[k] for k in sorted(files))
        ).hexdigest()
        repo = Repo(commit=digest, files=files, gated=gated)
        self.repos[repo_id] = repo
        return repo

    def gets(self, filename: str) -> list[dict]:
        return [e for e in self.log if e["method"] == "GET" and e["path"].endswith("/" + filename)]


def etag_of(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def make_handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _json(self, status: int, obj, headers: dict | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str) -> None:
            self._json(status, {"error": code}, {"X-Error-Code": code, "X-Error-Message": code})

        def _find(self, parts: list[str]) -> tuple[str, Repo | None]:
            repo_id = "/".join(parts[:2])
            return repo_id, state.repos.get(repo_id)

        def do_HEAD(self):
            self._serve()

        def do_GET(self):
            self._serve()

        def _serve(self):
            url = urlparse(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            with state.lock:
                state.log.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "range": self.headers.get("Range"),
                        "auth": self.headers.get("Authorization"),
                    }
                )
            if parts[:2] == ["api", "models"]:
                return self._api(parts[2:])
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(parts)
            self._error(404, "NotFound")

        def _api(self, parts: list[str]):
            repo_id, repo = self._find(parts)
            if repo is None:
                return self._error(404, "RepoNotFound")
            if repo.gated and not self.headers.get("Authorization"):
                return self._error(401, "GatedRepo")
            rev = parts[3] if len(parts) >= 4 and parts[2] == "revision" else "main"
            if rev not in ("main", repo.commit) and not state.any_revision:
                return self._error(404, "RevisionNotFound")
            siblings = []
            for name, data in repo.files.items():
                entry = {"rfilename": name, "size": len(data), "blobId": etag_of(name, data)}
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {
                        "sha256": etag_of(name, data),
                        "size": len(data),
                        "pointerSize": 134,
                    }
                siblings.append(entry)
            self._json(
                200,
                {
                    "_id": repo.commit[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.commit,
                    "private": False,
                    "gated": "auto" if repo.gated else False,
                    "disabled": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": ["mlx"],
                    "siblings": siblings,
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "createdAt": "2025-01-01T00:00:00.000Z",
                },
            )

        def _resolve(self, parts: list[str]):
            repo_id, repo = self._find(parts)
            if repo is None:
                return self._error(404, "RepoNotFound")
            if repo.gated and not self.headers.get("Authorization"):
                return self._error(401, "GatedRepo")
            rev, name = parts[3], "/".join(parts[4:])
            if rev not in ("main", repo.commit) and not state.any_revision:
                return self._error(404, "RevisionNotFound")
            data = repo.files.get(name)
            if data is None:
                return self._json(
                    404,
                    {"error": "EntryNotFound"},
                    {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit},
                )
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0] or 0)
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{etag_of(name, data)}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            drop = False
            with state.lock:
                if (repo_id, name) in state.drop_once:
                    state.drop_once.discard((repo_id, name))
                    drop = True
            limit = len(body) // 2 if drop else len(body)
            sent = 0
            try:
                while sent < limit:
                    piece = body[sent : min(sent + state.chunk_size, limit)]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    sent += len(piece)
                    if state.chunk_delay:
                        time.sleep(state.chunk_delay)
            except (BrokenPipeError, ConnectionResetError):
                return
            if drop:
                self.close_connection = True
                self.connection.shutdown(2)

    return Handler


class HubServer:
    """`with HubServer() as hub:` serves `hub.state` on `hub.url` until the block ends."""

    def __init__(self):
        self.state = HubState()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
