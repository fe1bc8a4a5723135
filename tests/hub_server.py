"""A small, local, fake Hugging Face Hub for offline tests (not part of the hfddpm package).

It implements the part of the Hub HTTP API that `huggingface_hub` (2.4) uses to create a repository, upload a folder,
read repository information and download files:

    POST /api/repos/create                                  create_repo (409 when it exists)
    POST /api/repos/delete                                  delete_repo
    GET  /api/whoami-v2                                     whoami
    GET  /api/agent-harnesses                               asked by the client's user-agent code (empty answer)
    POST /api/validate-yaml                                 README.md metadata check before an upload
    POST /api/models/{repo_id}/preupload/{revision}         upload modes: always "regular" (no LFS/Xet needed)
    POST /api/models/{repo_id}/commit/{revision}            NDJSON commit (file, deletedFile, deletedFolder)
    GET  /api/models/{repo_id}[/revision/{revision}]        model_info / repo_info (sha, siblings, cardData)
    GET  /api/models/{repo_id}/tree/{revision}[/{path}]     list_repo_tree / list_repo_files
    GET  /api/models/{repo_id}/commits/{revision}           list_repo_commits
    HEAD /{repo_id}/resolve/{revision}/{path}               file metadata (X-Repo-Commit, ETag, Content-Length)
    GET  /{repo_id}/resolve/{revision}/{path}               file content (Range supported)

Repositories live under a root folder: content-addressed blobs in ``blobs/`` (git blob sha1, as the Hub uses for
regular files) and one JSON file per repository with its commit history (``repos/{namespace}/{name}.json``).
Every repository starts with an "initial commit" holding ``.gitattributes``, like on the Hub.

Authentication follows the Hub: a ``Bearer`` token from ``tokens`` maps to a user name; an unknown token gets 401
"Invalid credentials in Authorization header" on any request; writes need a token whose user owns the namespace;
private repositories are invisible (401, RepoNotFound) without it. ``set_failure`` makes the server answer a fixed
HTTP status for every request (or for some endpoints only), to test what clients do when the Hub fails.

Tests get one from the ``hub`` fixture of ``tests/conftest.py`` (``tests/`` is on the test path, see setup.cfg), or use
it as a context manager (a thread on 127.0.0.1, random free port)::

    with FakeHub(tmp_path, tokens={"hf_test": "user"}) as hub:
        HfApi(endpoint=hub.url, token="hf_test").create_repo("user/x")

or run it on its own: ``python tests/hub_server.py --root /tmp/hub --token hf_test:user``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.ckpt filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.pth filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
# The tokens of the fake Hub that the `hub` fixture of tests/conftest.py starts: user "user" and user "other".
TEST_TOKENS = {"hf_hfddpmtestwritetoken0123456789": "user", "hf_fakehubothertoken0123456789": "other"}
USER_TOKEN, OTHER_TOKEN = TEST_TOKENS
_COMMIT_OID = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what `git hash-object` prints), used by the Hub as oid/ETag of regular files."""
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An HTTP error answer: status, message and the Hub's X-Error-Code (RepoNotFound, EntryNotFound, ...)."""

    def __init__(self, status: int, message: str, error_code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}
        self.body = body  # extra JSON fields of the answer (the Hub answers 409 on create with the repo "url")


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, str]  # path -> blob oid

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    commits: list[Commit] = field(default_factory=list)  # oldest first; the last one is the head of "main"

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit:
        if revision in ("main", "HEAD"):
            return self.head
        if _COMMIT_OID.match(revision):
            for commit in self.commits:
                if commit.oid == revision:
                    return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class FakeHub:
    """Fake Hub state plus the HTTP server serving it (see the module docstring)."""

    def __init__(self, root: str | Path, tokens: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens or {})
        self.host = host
        self.port = port
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict] = []  # one dict per request: method, path, endpoint, user, status (never a token)
        self.unhandled: list[str] = []  # requests that matched no route: a client asked for something not faked
        self._failure: tuple[int, set[str] | None] | None = None
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._load()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started; call start() or use it as a context manager.")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test controls

    def set_failure(self, status: int, endpoints: list[str] | None = None) -> None:
        """Answer `status` to every request, or only to the named endpoints (see `_Handler.ROUTES`, e.g. "commit")."""
        self._failure = (status, set(endpoints) if endpoints else None)

    def clear_failure(self) -> None:
        self._failure = None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """All files of a repository at a revision, as {path: content}."""
        with self._lock:
            commit = self._repo(repo_id).resolve(revision)
            return {path: self._read_blob(oid) for path, oid in commit.files.items()}

    def commits(self, repo_id: str) -> list[Commit]:
        """Commit history of a repository, oldest first."""
        with self._lock:
            return list(self._repo(repo_id).commits)

    # ------------------------------------------------------------------ storage

    def _repo_file(self, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_id}.json"

    def _load(self) -> None:
        for path in sorted((self.root / "repos").glob("*/*.json")):
            data = json.loads(path.read_text())
            repo = Repo(data["repo_id"], data["private"], data["created_at"])
            repo.commits = [Commit(**c) for c in data["commits"]]
            self.repos[repo.repo_id] = repo

    def _save(self, repo: Repo) -> None:
        path = self._repo_file(repo.repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "repo_id": repo.repo_id,
            "private": repo.private,
            "created_at": repo.created_at,
            "commits": [c.to_json() for c in repo.commits],
        }
        path.write_text(json.dumps(data, indent=1))

    def _write_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            path.write_bytes(data)
        return oid

    def _read_blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _readable_repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            # Like the Hub: a private repository is indistinguishable from a missing one without access.
            raise HubError(401 if user is None else 404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self._readable_repo(repo_id, user)
        self._check_write(repo_id.split("/")[0], user)
        return repo

    @staticmethod
    def _check_write(namespace: str, user: str | None) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to write to the Hub (pass a token).")
        if user != namespace:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace!r} as {user!r}.")

    def _new_commit(self, repo: Repo, files: dict[str, str], title: str, message: str, author: str) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else None
        payload = json.dumps([parent, sorted(files.items()), title, message, author, _now()]).encode()
        commit = Commit(hashlib.sha1(payload).hexdigest(), parent, title, message, author, _now(), dict(files))
        repo.commits.append(commit)
        self._save(repo)
        return commit

    # ------------------------------------------------------------------ API (called by the handler)

    def create_repo(self, body: dict, user: str | None) -> dict:
        name, organization = body.get("name"), body.get("organization")
        if body.get("type", "model") not in ("model", None):
            raise HubError(400, f"The fake Hub only hosts model repositories, got type={body.get('type')!r}.")
        namespace = organization or user
        self._check_write(namespace or "", user)
        if not name or not _NAME.match(name) or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repository name: {name!r}.")
        repo_id = f"{namespace}/{name}"
        with self._lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
            repo = Repo(repo_id, body.get("visibility", "public") == "private" or bool(body.get("private")), _now())
            self.repos[repo_id] = repo
            oid = self._write_blob(GITATTRIBUTES.encode())
            self._new_commit(repo, {".gitattributes": oid}, "initial commit", "", user)
        return {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def delete_repo(self, body: dict, user: str | None) -> dict:
        repo_id = f"{body.get('organization') or user}/{body.get('name')}"
        with self._lock:
            self._writable_repo(repo_id, user)
            del self.repos[repo_id]
            self._repo_file(repo_id).unlink()
        return {}

    def preupload(self, repo_id: str, revision: str, body: dict, user: str | None) -> dict:
        with self._lock:
            commit = self._writable_repo(repo_id, user).resolve(revision)
            files = []
            for item in body.get("files", []):
                path = item["path"]
                files.append(
                    {"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": commit.files.get(path)}
                )
        return {"files": files, "commitOid": commit.oid}

    def commit(self, repo_id: str, revision: str, ndjson: bytes, user: str | None) -> dict:
        lines = [json.loads(line) for line in ndjson.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit payload must be its header.")
        header = lines[0]["value"]
        with self._lock:
            repo = self._writable_repo(repo_id, user)
            base = repo.resolve(revision)
            if base.oid != repo.head.oid:
                raise HubError(400, "The fake Hub only commits on top of the main branch.")
            parent = header.get("parentCommit")
            if parent is not None and not base.oid.startswith(parent):
                raise HubError(412, f"A commit has happened since. Please refresh and try again (head {base.oid}).")
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}.")
                    files[path] = self._write_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for existing in [p for p in files if p.startswith(prefix)]:
                        del files[existing]
                elif key == "lfsFile":
                    raise HubError(422, f"The fake Hub stores regular files only; got an LFS pointer for {path}.")
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}.")
            commit = self._new_commit(repo, files, header["summary"], header.get("description", ""), user)
        return {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{self.url}/{repo_id}/commit/{commit.oid}",
            "hookOutput": "",
            "pullRequestUrl": None,
        }

    def model_info(self, repo_id: str, revision: str, user: str | None, blobs: bool) -> dict:
        with self._lock:
            repo = self._readable_repo(repo_id, user)
            commit = repo.resolve(revision)
            siblings = []
            for path, oid in sorted(commit.files.items()):
                sibling = {"rfilename": path}
                if blobs:
                    sibling.update(size=len(self._read_blob(oid)), blobId=oid)
                siblings.append(sibling)
            card = _card_metadata(self._read_blob(commit.files["README.md"])) if "README.md" in commit.files else {}
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []),
            "siblings": siblings,
        }
        for key in ("library_name", "pipeline_tag"):
            if key in card:
                info[key] = card[key]
        if card:
            info["cardData"] = card
        return info

    def tree(self, repo_id: str, revision: str, path: str, recursive: bool, user: str | None) -> list[dict]:
        with self._lock:
            commit = self._readable_repo(repo_id, user).resolve(revision)
            prefix = path.strip("/") + "/" if path.strip("/") else ""
            if prefix and not any(p.startswith(prefix) for p in commit.files):
                raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
            entries, folders = [], set()
            for file_path, oid in sorted(commit.files.items()):
                if not file_path.startswith(prefix):
                    continue
                parts = file_path[len(prefix) :].split("/")
                for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                    folders.add(prefix + "/".join(parts[:depth]))
                if recursive or len(parts) == 1:
                    size = len(self._read_blob(oid))
                    entries.append({"type": "file", "oid": oid, "size": size, "path": file_path})
        for folder in sorted(folders):
            entries.append(
                {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder}
            )
        return sorted(entries, key=lambda e: e["path"])

    def list_commits(self, repo_id: str, revision: str, user: str | None) -> list[dict]:
        with self._lock:
            repo = self._readable_repo(repo_id, user)
            head = repo.resolve(revision)
            history = repo.commits[: repo.commits.index(head) + 1]
        return [
            {"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
            for c in reversed(history)
        ]

    def resolve_file(self, repo_id: str, revision: str, path: str, user: str | None) -> tuple[Commit, bytes]:
        with self._lock:
            commit = self._readable_repo(repo_id, user).resolve(revision)
            oid = commit.files.get(path)
            if oid is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
            return commit, self._read_blob(oid)


def _card_metadata(readme: bytes) -> dict:
    text = readme.decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, flags=re.S)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else {}


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub  # bound by FakeHub.start
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    # (method, regex on the raw path, endpoint name); repo ids are "namespace/name"
    _REPO = r"(?P<repo>[^/]+/[^/]+)"
    ROUTES = [
        ("POST", r"/api/repos/create", "create"),
        ("POST", r"/api/repos/delete", "delete"),
        ("GET", r"/api/whoami-v2", "whoami"),
        ("GET", r"/api/agent-harnesses", "agent-harnesses"),
        ("POST", r"/api/validate-yaml", "validate-yaml"),
        ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("GET", rf"/api/models/{_REPO}/commits/(?P<rev>[^/]+)", "commits"),
        ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", "model-info"),
        ("GET", rf"/api/models/{_REPO}", "model-info"),
        ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr access log
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if auth is None:
            return None
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else auth
        user = self.hub.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data, headers: dict | None = None):
        self._send(status, json.dumps(data).encode(), headers)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        record = {"method": method, "path": unquote(split.path), "endpoint": None, "user": None, "status": None}
        self.hub.requests.append(record)
        try:
            body = self._body() if method in ("POST", "PUT") else b""
            for route_method, pattern, name in self.ROUTES:
                match = re.fullmatch(pattern, split.path)
                if match and route_method == method:
                    record["endpoint"] = name
                    break
            else:
                self.hub.unhandled.append(f"{method} {self.path}")
                raise HubError(404, f"Fake Hub: no route for {method} {split.path}")
            failure = self.hub._failure
            if failure is not None and (failure[1] is None or name in failure[1]):
                raise HubError(failure[0], f"Fake Hub configured to fail with HTTP {failure[0]}.")
            user = record["user"] = self._user()
            params = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
            status, payload, headers = self._route(name, method, params, query, body, user)
        except HubError as err:
            status = err.status
            headers = dict(err.headers)
            headers.setdefault("X-Error-Message", err.message.encode("ascii", "replace").decode())
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            payload = {"error": err.message, **err.body}
        except Exception as err:  # a bug in the fake: answer 500 with the reason instead of hanging the client
            status, headers, payload = 500, {}, {"error": f"Fake Hub internal error: {err!r}"}
        record["status"] = status
        if isinstance(payload, bytes):
            self._send(status, payload, headers, content_type="application/octet-stream")
        else:
            self._send_json(status, payload, headers)

    def _route(self, name, method, params, query, body, user):
        hub = self.hub
        repo, rev = params.get("repo"), params.get("rev")
        if name == "create":
            return 200, hub.create_repo(json.loads(body or b"{}"), user), {}
        if name == "delete":
            return 200, hub.delete_repo(json.loads(body or b"{}"), user), {}
        if name == "whoami":
            if user is None:
                raise HubError(401, "Invalid username or password.")
            return 200, {"type": "user", "name": user, "auth": {"type": "access_token"}}, {}
        if name == "agent-harnesses":  # registry behind the client's user-agent detection: none known here
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if name == "validate-yaml":
            content = json.loads(body or b"{}").get("content", "")
            try:
                _card_metadata(content.encode())
            except yaml.YAMLError as err:
                return 400, {"errors": [{"message": f"Invalid YAML metadata: {err}"}], "warnings": []}, {}
            return 200, {"errors": [], "warnings": []}, {}
        if name == "preupload":
            return 200, hub.preupload(repo, rev, json.loads(body or b"{}"), user), {}
        if name == "commit":
            return 200, hub.commit(repo, rev, body, user), {}
        if name == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return 200, hub.tree(repo, rev, params.get("path") or "", recursive, user), {}
        if name == "commits":
            return 200, hub.list_commits(repo, rev, user), {}
        if name == "model-info":
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            return 200, hub.model_info(repo, rev or "main", user, blobs), {}
        if name == "resolve":
            commit, data = hub.resolve_file(repo, rev, params["path"], user)
            headers = {
                "X-Repo-Commit": commit.oid,
                "ETag": f'"{git_blob_sha1(data)}"',
                "Accept-Ranges": "bytes",
            }
            status = 200
            range_header = self.headers.get("Range")
            if range_header and method == "GET":
                start_text, _, end_text = range_header.removeprefix("bytes=").partition("-")
                start = int(start_text)
                end = int(end_text) if end_text else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start : end + 1], 206
            return status, data, headers
        raise HubError(404, f"Fake Hub: no handler for {name}")


def use_fake_hub(monkeypatch, hub: FakeHub, home: str | Path) -> dict[str, str]:
    """Point huggingface_hub at `hub` in this process (constants are read at import) and in child processes (env).

    ``home`` becomes HF_HOME: an empty cache and no saved login. Returns the environment for child processes.
    """
    from huggingface_hub import constants

    home = Path(home)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake Hugging Face Hub on 127.0.0.1.")
    parser.add_argument("--root", required=True, help="folder where repositories are stored")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--token", action="append", default=[], help="TOKEN:USER, may be repeated")
    args = parser.parse_args()
    tokens = dict(item.split(":", 1) for item in args.token)
    hub = FakeHub(args.root, tokens=tokens, port=args.port).start()
    print(f"HF_ENDPOINT={hub.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
