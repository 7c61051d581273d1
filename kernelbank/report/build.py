"""``write_report``: collect a run's outputs, draw them, and write ``OUTPUT/report/``.

The page and its PNGs are written with fsspec next to the outputs (a local folder or
``s3://…``); the page references its images by relative name only and loads nothing
from the network, so the folder can be opened offline, copied or downloaded as is.
"""

from __future__ import annotations

import time

from ..io.storage import join, redact, resolve, url_of
from . import sections
from .collect import collect_run
from .html import page, text

__all__ = ["write_report", "REPORT_DIR", "REPORT_PAGE"]

REPORT_DIR = "report"
REPORT_PAGE = "index.html"


def write_report(url: str, *, s3_endpoint: str | None = None, samples_per_class: int = 2,
                 max_classes: int = 12, max_error_rows: int = 50) -> str:
    """Write ``OUTPUT/report/index.html`` and its PNGs for the run output at ``url``.

    Parameters
    ----------
    url : str
        Output of ``kernelbank run`` (or ``kernelbank train``): local path or fsspec URL.
    s3_endpoint : str, optional
        S3-compatible endpoint (default ``AWS_ENDPOINT_URL``).
    samples_per_class : int, default=2
        Test images per class drawn with their residual and best-kernel maps.
    max_classes : int, default=12
        Classes that get sample images.
    max_error_rows : int, default=50
        Error rows listed (all are counted).

    Returns
    -------
    str
        URL (or local path) of ``index.html``. An older report there is replaced.

    Raises
    ------
    FileNotFoundError
        When ``url`` holds no run summary.
    """
    for name, value in (("samples_per_class", samples_per_class), ("max_classes", max_classes),
                        ("max_error_rows", max_error_rows)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    data = collect_run(url, s3_endpoint=s3_endpoint, samples_per_class=samples_per_class,
                       max_classes=max_classes, max_error_rows=max_error_rows)
    images: dict[str, bytes] = {}
    parts = [("overview", "Overview", sections.overview_section),
             ("dataset", "Dataset", sections.dataset_section),
             ("banks", "Kernel banks", sections.bank_section),
             ("samples", "Residual maps", sections.samples_section),
             ("results", "Results", sections.results_section),
             ("performance", "Performance", sections.performance_section),
             ("training", "End-to-end training", sections.training_section)]
    built = [(anchor, title, build(data, images)) for anchor, title, build in parts]
    notes = "".join(f"<li>{text(n)}</li>" for n in data.notes)
    if notes:
        built.append(("notes", "Notes", f"<ul>{notes}</ul>"))
    summary = data.summary or {}
    subtitle = (f"Output <code>{text(redact(url))}</code>"
                + (f", input <code>{text(summary['input'])}</code>" if summary.get("input") else "")
                + (f", finished {text(summary['finished'])}" if summary.get("finished") else "")
                + f". Report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    document = page("kernelbank run report", subtitle, built)
    fs, root = resolve(url, s3_endpoint=s3_endpoint)
    folder = join(root, REPORT_DIR)
    if fs.exists(folder):
        fs.rm(folder, recursive=True)
    fs.makedirs(folder, exist_ok=True)
    for name, content in images.items():
        with fs.open(join(folder, name), "wb") as handle:
            handle.write(content)
    with fs.open(join(folder, REPORT_PAGE), "wb") as handle:
        handle.write(document.encode("utf-8"))
    return url_of(fs, join(folder, REPORT_PAGE))
