"""Start a local Label Studio (installed in its own virtual environment) on loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from semcorr.errors import SemcorrError

REPO_VENV_BINARY = Path(__file__).resolve().parents[2] / ".venv-ls" / "bin" / "label-studio"


def find_binary() -> Path | None:
    """SEMCORR_LABEL_STUDIO, the repository's .venv-ls, or `label-studio` on PATH."""
    candidates = [os.environ.get("SEMCORR_LABEL_STUDIO"), str(REPO_VENV_BINARY), shutil.which("label-studio")]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalServer:
    """A running local Label Studio."""

    process: subprocess.Popen
    url: str
    token: str
    username: str
    password: str

    def stop(self) -> None:
        """Terminate the server and its children."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)


def start(data_dir: Path, port: int | None = None, username: str = "admin@example.com",
          password: str | None = None, token: str | None = None, wait_s: float = 240.0,
          log: Path | None = None) -> LocalServer:
    """Start Label Studio on 127.0.0.1 with local file serving and a legacy API token; wait for /health."""
    binary = find_binary()
    if binary is None:
        raise SemcorrError("Label Studio is not installed: run `bash scripts/setup-label-studio.sh` (it installs it "
                           "into .venv-ls) or set SEMCORR_LABEL_STUDIO")
    port = port or free_port()
    password = password or secrets.token_hex(8)
    token = token or secrets.token_hex(20)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": "/",
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    output = open(log or Path(data_dir) / "server.log", "w")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [str(binary), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1", "--host", url,
         "--data-dir", str(data_dir), "--username", username, "--password", password, "--user-token", token,
         "--enable-legacy-api-token"],
        stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SemcorrError(f"Label Studio exited with {process.returncode}; see {output.name}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return LocalServer(process, url, token, username, password)
        except OSError:
            pass
        time.sleep(2)
    server = LocalServer(process, url, token, username, password)
    server.stop()
    raise SemcorrError(f"Label Studio did not answer on {url} within {wait_s:.0f} s; see {output.name}")
