"""Start a local Label Studio (installed in its own virtual environment) on loopback.

Security, by construction:
- the user name, password and API token reach Label Studio through its environment
  (LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_USER_TOKEN), never its command
  line, which every local user can read in `ps`;
- they are made once per data dir and kept in `<data dir>/semcorr-credentials.json` (mode 0600),
  so a restart on the same data dir reports the credentials that work (Label Studio keeps the
  first user's password and token in its database and ignores new ones);
- local file serving is limited to the folder holding the datasets' image folders
  (LOCAL_FILES_DOCUMENT_ROOT), never `/`;
- Label Studio runs in its own process group, killed as a whole by `LocalServer.stop`, and
  gets SIGTERM from the kernel if the process that started it dies (Linux).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from semcorr.errors import SemcorrError

REPO_VENV_BINARY = Path(__file__).resolve().parents[2] / ".venv-ls" / "bin" / "label-studio"
CREDENTIALS_FILE = "semcorr-credentials.json"
DATABASE_FILE = "label_studio.sqlite3"


def find_binary() -> Path | None:
    """SEMCORR_LABEL_STUDIO, the repository's .venv-ls, or `label-studio` on PATH."""
    candidates = [os.environ.get("SEMCORR_LABEL_STUDIO"), str(REPO_VENV_BINARY), shutil.which("label-studio")]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now (connections in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def document_root(image_roots: Iterable[Path]) -> Path:
    """The folder Label Studio may serve files from: the deepest folder holding every image folder.

    Label Studio requires each local storage (an image folder) to lie strictly inside its
    document root, so this is the common folder of the image folders' parents.

    Raises:
        SemcorrError: when that folder would be `/` (the datasets share no folder).
    """
    roots = [Path(os.path.realpath(Path(r).expanduser())) for r in image_roots]
    if not roots:
        raise SemcorrError("review server: give the dataset(s) whose images it serves with --dataset DATASET")
    common = Path(os.path.commonpath([str(r.parent) for r in roots]))
    if common == Path(common.anchor):
        raise SemcorrError(f"review server: the image folders {', '.join(map(str, roots))} share no folder below "
                           f"{common}; serving them would expose the whole disk, so serve one dataset per server")
    return common


def load_credentials(data_dir: Path, username: str, password: str | None, token: str | None) -> dict:
    """The data dir's credentials: made (and written 0600) on first start, read back on every restart.

    Raises:
        SemcorrError: a data dir with a Label Studio database but no credentials file (they
            cannot be known), a credentials file that is not ours, or new credentials asked for
            a data dir that has them already.
    """
    path = Path(data_dir) / CREDENTIALS_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if not all(isinstance(stored.get(k), str) and stored[k] for k in ("username", "password", "token")):
                raise ValueError
        except (OSError, ValueError, AttributeError):
            raise SemcorrError(f"{path}: not a semcorr credentials file (username, password, token); restore it or "
                               "start on a new --data-dir") from None
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        asked = {"password": password, "token": token}
        if any(value is not None and value != stored[key] for key, value in asked.items()):
            raise SemcorrError(f"{path}: this data dir already has its password and token (Label Studio keeps the "
                               "first ones); use them, or start on a new --data-dir")
        return stored
    if (Path(data_dir) / DATABASE_FILE).exists():
        raise SemcorrError(f"{data_dir}: holds a Label Studio database made without {CREDENTIALS_FILE}, so the "
                           "working password and token are unknown; use a new --data-dir, or reset the password "
                           "with `label-studio reset_password` and take the token from Account & Settings")
    stored = {"username": username, "password": password or secrets.token_urlsafe(12),
              "token": token or secrets.token_hex(20)}
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another start raced us: use what it wrote
        return load_credentials(data_dir, username, password, token)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(stored, handle, indent=1)
        handle.write("\n")
    return stored


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Own process group, and SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalServer:
    """A running local Label Studio."""

    process: subprocess.Popen
    url: str
    token: str = field(repr=False)
    username: str
    password: str = field(repr=False)
    credentials_file: Path | None = None
    document_root: Path | None = None

    def stop(self) -> None:
        """Terminate the server's whole process group (safe to call twice)."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)


def start(data_dir: Path, port: int | None = None, username: str = "admin@example.com",
          password: str | None = None, token: str | None = None, wait_s: float = 240.0,
          log: Path | None = None, image_roots: Iterable[Path] | None = None) -> LocalServer:
    """Start Label Studio on 127.0.0.1 with local file serving and a legacy API token; wait for /health.

    Args:
        data_dir: Label Studio's data folder (database, credentials file, log).
        image_roots: the image folders to serve; the document root is the folder holding them
            (`document_root`). Without them, the folder holding `data_dir` (for tests that keep
            the data dir beside their datasets).
        password, token: the first start's credentials (random when not given); a restart on
            the same data dir reuses the stored ones.
    """
    binary = find_binary()
    if binary is None:
        raise SemcorrError("Label Studio is not installed: run `bash scripts/setup-label-studio.sh` (it installs it "
                           "into .venv-ls) or set SEMCORR_LABEL_STUDIO")
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise SemcorrError(f"--data-dir {data_dir}: exists and is not a folder; choose a folder")
    root = document_root(image_roots) if image_roots is not None else Path(os.path.realpath(data_dir)).parent
    if port is None:
        port = free_port()
    elif not 0 < port < 65536:
        raise SemcorrError(f"--port {port}: use a TCP port from 1 to 65535")
    elif not port_is_free(port):
        raise SemcorrError(f"--port {port}: 127.0.0.1:{port} is in use (another Label Studio?); stop it or choose "
                           "another --port")
    credentials = load_credentials(data_dir, username, password, token)
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items()
           if key not in ("USERNAME", "PASSWORD", "USER_TOKEN", "HEARTEX_USERNAME", "HEARTEX_PASSWORD",
                          "HEARTEX_USER_TOKEN")}
    env.update({"LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(root),
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                "LABEL_STUDIO_USERNAME": credentials["username"], "LABEL_STUDIO_PASSWORD": credentials["password"],
                "LABEL_STUDIO_USER_TOKEN": credentials["token"]})
    # The server listens on loopback only, and so does `semcorr review backend`: let it reach an ML backend
    # there. Label Studio 1.23 also creates a webhook to every ML backend it is given, and its webhook check
    # refuses loopback addresses unless the default banned subnets are off, so both are needed. This lets the
    # server fetch URLs on this machine's private networks too; it is meant for one user on one machine.
    env.setdefault("ML_BLOCK_LOCAL_IP", "false")
    env.setdefault("USE_DEFAULT_BANNED_SUBNETS", "false")
    log_path = Path(log or data_dir / "server.log")
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise SemcorrError(f"{log_path}: cannot write the server log ({os.strerror(exc.errno or errno.EIO)})") from None
    with os.fdopen(fd, "w") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [str(binary), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1", "--host", url,
             "--data-dir", str(data_dir), "--enable-legacy-api-token"],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_child_setup)  # noqa: PLW1509 - setsid + parent-death signal, nothing else
    server = LocalServer(process, url, credentials["token"], credentials["username"], credentials["password"],
                         data_dir / CREDENTIALS_FILE, root)
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SemcorrError(f"Label Studio exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        return server
            except OSError:
                pass
            time.sleep(2)
        raise SemcorrError(f"Label Studio did not answer on {url} within {wait_s:.0f} s; see {log_path}")
    except BaseException:
        server.stop()
        raise
