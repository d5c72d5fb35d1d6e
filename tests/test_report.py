"""The dataset report: counts worked out from the store, byte-identical reruns, the per-cell cap, annotation
rounds and QC rows, refused outputs, and the page opened in a real headless Chromium."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from semcorr import atomic, commands, store
from semcorr.cli import app
from semcorr.viewers.report import ReportOptions

runner = CliRunner()


@pytest.fixture(scope="module")
def report_dir(synth_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    commands.run_report(synth_store, out, ReportOptions(max_pairs_per_cell=2, seed=3))
    return out


def image_sources(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_counts_and_tables_match_the_store(report_dir, synth_store):
    html = (report_dir / "index.html").read_text()
    dataset = store.load_dataset(synth_store)
    pairs = store.load_pairs(synth_store)
    assert f"<td>pairs</td><td>{len(pairs):,}</td>" in html
    assert f"<td>images</td><td>{len(dataset.images)}</td>" in html
    assert f"<td>instances</td><td>{len(dataset.instances)}</td>" in html
    # Table 2 rows: per category, pairs in trn, val, test and all, counted here from the table
    for category, group in pairs.groupby(pairs["category"].astype(str)):
        counts = [int((group["split"].astype(str) == s).sum()) for s in store.SPLIT_NAMES]
        cells = "".join(f"<td>{n:,}</td>" for n in [*counts, sum(counts)])
        assert f"<td>{category}</td>{cells}" in html
    # Table 1: hard viewpoint pairs in every split
    hard = [int(((pairs["viewpoint_variation"] == 2) & (pairs["split"].astype(str) == s)).sum())
            for s in store.SPLIT_NAMES]
    assert "<td>Viewpoint hard</td>" + "".join(f"<td>{n:,}</td>" for n in [*hard, sum(hard)]) in html


def test_every_image_is_a_relative_file_and_nothing_is_fetched(report_dir):
    html = (report_dir / "index.html").read_text()
    sources = image_sources(html)
    assert "stats/fig1_difficulty_pies.png" in sources and "stats/fig2_azimuth_histograms.png" in sources
    for source in sources:
        assert not source.startswith(("/", "http:", "https:", "file:")) and (report_dir / source).is_file()
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_cap_and_seeded_choice(report_dir, synth_store, tmp_path):
    html = (report_dir / "index.html").read_text()
    pairs = store.load_pairs(synth_store)
    grids = "".join(re.findall(r'<table class="cells">(.*?)</table>', html, flags=re.DOTALL))
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\w+)</td><td>([\d,]+)</td>\s*<td>(.*?)</td></tr>", grids)
    assert len(rows) == 3 * 14  # 3 categories x (3 viewpoint + 3 scale + 4 truncation + 4 occlusion) levels
    for _, _, count, cell in rows:
        drawn = re.findall(r'alt="pair (\d+)"', cell)
        assert len(drawn) == min(2, int(count.replace(",", "")))
    drawn_ids = {int(i) for i in re.findall(r'alt="pair (\d+)"', html)}
    assert drawn_ids <= set(pairs["pair_id"].astype(int))
    assert {p.name for p in (report_dir / "img").glob("pair_*.png")} == {f"pair_{i:06d}.png" for i in drawn_ids}
    other = tmp_path / "other-seed"
    commands.run_report(synth_store, other, ReportOptions(max_pairs_per_cell=2, seed=4))
    assert {int(i) for i in re.findall(r'alt="pair (\d+)"', (other / "index.html").read_text())} != drawn_ids


def test_rerun_is_byte_identical(report_dir, synth_store, tmp_path):
    again = tmp_path / "again"
    commands.run_report(synth_store, again, ReportOptions(max_pairs_per_cell=2, seed=3))
    files = sorted(p.relative_to(report_dir) for p in report_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (report_dir / name).read_bytes() == (again / name).read_bytes(), name


def test_annotation_rounds_and_qc_rows(store_copy, tmp_path):
    dataset = store.load_dataset(store_copy)
    first = next(inst for inst in dataset.instances if inst.labelled.sum() >= 6)
    side = max(first.bbox[2], first.bbox[3])
    labelled = list(np.flatnonzero(first.labelled))[:6]
    # round 2: 3 accepted, 1 dragged within 0.1 of the box side, 1 dragged beyond it, 1 added
    actions = [("accepted", 0), ("accepted", 0), ("accepted", 0), ("dragged", 0.05 * side), ("dragged", 0.5 * side),
               ("added", 0)]
    first.extra_attributes["keypoint_provenance"] = {
        str(k): {"action": a, "round": 2, "annotator": "t", **({"displacement": d} if a == "dragged" else {})}
        for k, (a, d) in zip(labelled, actions)}
    store.save_dataset(dataset, store_copy)
    atomic.write_json(store_copy / "annotation" / "plan.json", {"seed": 0, "images": {
        str(i): {"set": "manual" if i % 2 else "alm1", "status": "planned"} for i in dataset.images}})
    qc = tmp_path / "qc" / "suspects.csv"
    qc.parent.mkdir()
    pd.DataFrame({"ann_id": range(100, 130), "brand_new_column": [f"value{i}" for i in range(30)],
                  "suspicion": np.linspace(9, 1, 30)}).to_csv(qc, index=False)
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", str(store_copy), "--out", str(out), "--qc", str(qc), "--qc-rows", "5",
                                 "--max-pairs-per-cell", "0"])
    assert result.exit_code == 0, result.output
    html = (out / "index.html").read_text()
    # (3 accepted + 1 near drag) hits over 6 keypoints left visible: 66.67
    row = re.search(r"<tr><td>2</td>(.*?)</tr>", html.split('id="annotation"')[1]).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row)[:5] == ["3", "2", "0", "1", "0"]
    assert "<td>66.67</td>" in row
    assert (out / "img" / "annotation_rounds.png").is_file()
    half = len(dataset.images) // 2
    assert f"<td>manual</td><td>{len(dataset.images) - half}</td>" in html
    qc_part = html.split('id="qc"')[1]
    assert "<th>brand_new_column</th>" in qc_part and "value4" in qc_part and "value5" not in qc_part
    assert "The top 5 of 30 rows of suspects.csv" in qc_part
    assert not list(out.glob("img/pair_*.png"))


def test_report_inside_the_dataset_is_refused_and_nothing_written(store_copy):
    result = runner.invoke(app, ["report", str(store_copy), "--out", str(store_copy / "report")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        (f"error: --out {store_copy}/report lies inside the input {store_copy}; choose an output folder outside the "
        "inputs")]
    assert not (store_copy / "report").exists()
    assert not [p for p in store_copy.parent.iterdir() if ".semcorr-" in p.name]


def test_report_on_a_folder_that_is_no_dataset(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path.parent / "r")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {tmp_path}/annotations.json: file not found"]


# ---------------------------------------------------------------------------- a real browser


class PipeBrowser:
    """Headless Chromium driven over the DevTools protocol on --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, binary: str, profile: Path):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def wire():  # in the child: the protocol wants our end of each pipe as fd 3 (in) and fd 4 (out)
            high_in, high_out = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--window-size=1280,2000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=wire)  # noqa: PLW1509 - the test starts no threads before this
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next, self.events = b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._read, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError("chromium sent nothing in time")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message(deadline))

    def close(self) -> None:
        os.close(self._write)
        os.close(self._read)
        self.process.terminate()
        self.process.wait(timeout=30)


def console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the protocol events."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(str(params.get("args")))
        elif method == "Runtime.exceptionThrown":
            errors.append(str(params.get("exceptionDetails")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(str(params["entry"].get("text")))
    return errors


def test_report_opens_in_headless_chromium(report_dir, tmp_path):
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium package)")
    browser = PipeBrowser(binary, tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1800, "deviceScaleFactor": 1,
                                                            "mobile": False}, session=session)
        browser.call("Page.navigate", {"url": (report_dir / "index.html").resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        status = browser.call("Runtime.evaluate", {"returnByValue": True, "expression": (
            "JSON.stringify(Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
            "i.naturalWidth]))")}, session=session)["result"]["value"]
        title = browser.call("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                             session=session)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    finally:
        browser.close()
    images = json.loads(status)
    html_sources = image_sources((report_dir / "index.html").read_text())
    assert [src for src, _, _ in images] == html_sources and len(images) > 20
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert broken == []
    assert console_errors(browser.events) == []
    assert title == "semcorr report: dataset"  # the dataset folder's name
    png = base64.b64decode(shot)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    keep = os.environ.get("SEMCORR_SCREENSHOT")
    (Path(keep) if keep else tmp_path / "report.png").write_bytes(png)
