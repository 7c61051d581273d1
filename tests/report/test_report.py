"""The run report of a real pipeline output: files, numbers, errors, remote output, browser.

The session's ``trained_run`` (``kernelbank run --train`` in a subprocess, see
tests/conftest.py) over three GMRF classes with a corrupt PNG, a too-small image and a
NaN image feeds every test here.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from kernelbank.cli import main as cli_main
from kernelbank.io.runs import open_published
from kernelbank.report import write_report

from ..stages.pipeline_data import BAD_RECORDS

pytestmark = [pytest.mark.ray]
CHROMIUM = Path("/usr/bin/chromium")


class _Page(HTMLParser):
    """Image sources, links and ``data-key`` numbers (with their shown text) of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.numbers, self.tables = [], [], [], {}
        self._open: list[dict] = []
        self._table = None
        self.text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for name in ("href", "src"):
            if name in attrs and tag not in ("img",):
                self.links.append(attrs[name])
        if tag == "span" and "data-key" in attrs:
            self._open.append({**attrs, "text": ""})
        if tag == "table" and "data-table" in attrs:
            self._table = attrs["data-table"]
            self.tables[self._table] = []

    def handle_endtag(self, tag):
        if tag == "span" and self._open:
            self.numbers.append(self._open.pop())
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._open:
            self._open[-1]["text"] += data
        if self._table:
            self.tables[self._table].append(data)
        self.text.append(data)


@pytest.fixture(scope="module")
def run(trained_run):
    """The session's ``kernelbank run --train`` (a PCA bank of one direction, one epoch)."""
    out = trained_run["out"]
    view = open_published(str(out))                 # the train run, built on the pipeline's
    report = Path(view.path) / "report"
    page = _Page()
    page.feed((report / "index.html").read_text())
    return {"data": trained_run["images"], "out": out, "view": view, "report": report,
            "stdout": trained_run["stdout"], "page": page, "summary": view.summary}


def _lookup(document, key: str):
    for part in key.split("."):
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def test_run_prints_the_report_path_last(run):
    lines = run["stdout"].strip().splitlines()
    assert lines[-1] == str(run["report"] / "index.html")


def test_run_with_train_adds_the_end_to_end_stage_to_output_and_report(run):
    view = run["view"]
    assert view.stages == ("fit", "reduce", "features", "classify", "train")
    assert view.stage_run("train") == view.run_id != view.stage_run("fit")   # fit reused
    train = Path(view.stage_path("train"))
    trained = json.loads((train / "summary.json").read_text())
    assert (train / "model.pt").exists()
    assert 0.0 <= trained["test_accuracy"] <= 1.0
    assert f"test_accuracy={trained['test_accuracy']:.4f}" in run["stdout"]
    # the report, written after training, shows its learning curves
    assert any(number.get("data-source") == "train" for number in run["page"].numbers)


def test_every_referenced_image_exists_and_decodes(run):
    folder, page = run["report"], run["page"]
    files = {p.name for p in folder.iterdir()}
    assert len(page.images) >= 8 and set(page.images) == files - {"index.html"}
    for src in page.images:
        with Image.open(folder / src) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 50
    assert all(link.startswith("#") for link in page.links), page.links   # nothing external
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5e6
    # 3 classes with 1 PCA direction at 2 dilations: 6 kernels -> a figure per class
    assert {"bank_000.png", "bank_001.png", "bank_002.png", "confusion.png",
            "stages.png", "counts.png"} <= files
    assert sum(f.startswith("sample_") for f in files) == 6       # 2 test images x 3 classes


def _shown_matches(text: str, value) -> bool:
    """Whether ``text`` (e.g. ``98.96 %``, ``12.3``, ``17``) shows ``value`` after rounding."""
    text = text.replace(" ", "").replace("\u202f", "")
    scale = 100.0 if text.endswith("%") else 1.0
    digits = text.rstrip("%")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return abs(float(digits) / scale - value) <= 0.5 * 10 ** -decimals / scale + 1e-12


def test_numbers_in_the_page_equal_summary_json(run):
    summary, numbers = run["summary"], run["page"].numbers
    checked = set()
    for item in numbers:
        if item["data-source"] != "summary":
            continue
        value = json.loads(item["data-value"])
        assert value == _lookup(summary, item["data-key"]), item
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert _shown_matches(item["text"], value), item
        checked.add(item["data-key"])
    required = {"images", "records", "errors", "test_accuracy",
                "stages.classify.test_accuracy", "stages.classify.likelihood_test_accuracy",
                "stages.fit.errors.decode"}
    required |= {f"stages.{s}.{k}" for s in ("fit", "reduce", "features", "classify")
                 for k in ("seconds", "images_per_second")}
    required |= {f"stages.fit.counts.{split}.{c}" for split, part in
                 summary["stages"]["fit"]["counts"].items() for c in part}
    n = len(summary["stages"]["classify"]["splits"]["test"]["labels"])
    required |= {f"stages.classify.splits.test.confusion.{i}.{j}"
                 for i in range(n) for j in range(n)}
    assert required <= checked, sorted(required - checked)


def test_precision_recall_equal_scikit_learn_on_the_confusion_counts(run):
    test = run["summary"]["stages"]["classify"]["splits"]["test"]
    labels, matrix = test["labels"], np.asarray(test["confusion"])
    y_true = np.repeat(np.repeat(labels, len(labels)), matrix.ravel())   # expand the counts
    y_pred = np.repeat(np.tile(labels, len(labels)), matrix.ravel())
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    derived = {i["data-key"]: json.loads(i["data-value"]) for i in run["page"].numbers
               if i["data-source"] == "derived"}
    for k, c in enumerate(labels):
        assert derived[f"precision.{c}"] == pytest.approx(p[k], abs=1e-12)
        assert derived[f"recall.{c}"] == pytest.approx(r[k], abs=1e-12)
        assert derived[f"support.{c}"] == s[k]


def test_errors_are_listed_with_their_reasons(run):
    page = run["page"]
    rows = [r for f in run["view"].error_files() for r in pq.read_table(f).to_pylist()]
    assert len(rows) == len(BAD_RECORDS) == run["summary"]["errors"]
    derived = {i["data-key"]: json.loads(i["data-value"]) for i in page.numbers}
    assert derived["n_errors"] == len(rows)
    shown = " ".join(page.tables["errors"])
    for path, reason in BAD_RECORDS.items():
        assert str(run["data"] / path) in shown and reason in shown
    for row in rows:
        assert row["reason"] in shown


@pytest.mark.s3
def test_report_command_on_s3(run, s3_endpoint, s3_bucket, capsys):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    local = run["out"]
    for path in local.rglob("*"):
        if path.is_file() and "report" not in path.parts and not path.name.startswith("."):
            fs.put_file(str(path), f"{s3_bucket}/run/{path.relative_to(local).as_posix()}")
    report = f"{s3_bucket}/run/runs/{run['view'].run_id}/report"
    fs.put_file(str(run["report"] / "counts.png"), f"{report}/stale.png")
    assert cli_main(["report", f"s3://{s3_bucket}/run"]) == 0
    assert capsys.readouterr().out.strip() == f"s3://{report}/index.html"
    fs.invalidate_cache()
    names = {p.rsplit("/", 1)[-1] for p in fs.find(report)}
    page = _Page()
    page.feed(fs.cat_file(f"{report}/index.html").decode())
    assert set(page.images) == names - {"index.html"}                 # stale file removed
    for src in page.images:
        Image.open(io.BytesIO(fs.cat_file(f"{report}/{src}"))).load()


def test_report_of_a_folder_without_summary_fails_clearly(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "holds no published kernelbank run" in capsys.readouterr().err


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const bad = [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
                                  .map(i => i.getAttribute('src'));
  const out = document.createElement('pre');
  out.id = 'kb-check';
  out.textContent = JSON.stringify({images: document.images.length, broken: bad});
  document.body.appendChild(out);
});
</script></body>"""


def _browser_check(page: Path, tmp_path: Path) -> dict:
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="kb-check">(.*?)</pre>', result.stdout)
    assert found, result.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="headless browser check needs Debian's chromium at /usr/bin/chromium "
                           "(apt-get install chromium)")
def test_page_loads_in_headless_chromium_with_every_image(run, tmp_path):
    folder = run["report"]
    html = (folder / "index.html").read_text()
    checked = folder / "_browser_check.html"            # next to index.html: same relative paths
    control = folder / "_browser_control.html"
    try:
        checked.write_text(html.replace("</body>", CHECK_SCRIPT))
        control.write_text(html.replace('src="confusion.png"', 'src="missing.png"')
                           .replace("</body>", CHECK_SCRIPT))
        good = _browser_check(checked, tmp_path)
        assert good["images"] == len(run["page"].images) and good["broken"] == []
        broken = _browser_check(control, tmp_path)   # the check can fail
        assert broken["broken"] == ["missing.png"]
    finally:
        checked.unlink(missing_ok=True)
        control.unlink(missing_ok=True)
