"""``write_report``: collect a published run, draw it, and write the run's ``report/``.

The page and its PNGs are written with fsspec into the published run's prefix
(``OUTPUT/runs/<run_id>/report/``, a local folder or ``s3://…``); the page references
its images by relative name only and loads nothing from the network, so the folder can
be opened offline, copied or downloaded as is. :func:`try_write_report` is what the
pipeline calls after publishing: a report that fails is a warning, never a failed run.
"""

from __future__ import annotations

import time

from ..io.atomic import remove_tree, write_bytes
from ..io.runs import open_published
from ..io.storage import join, redact, url_of
from . import sections
from .collect import collect_view
from .html import page, text

__all__ = ["write_report", "try_write_report", "REPORT_DIR", "REPORT_PAGE"]

REPORT_DIR = "report"
REPORT_PAGE = "index.html"


def write_report(url: str, *, s3_endpoint: str | None = None, samples_per_class: int = 2,
                 max_classes: int = 12, max_error_rows: int = 50) -> str:
    """Write ``report/index.html`` and its PNGs into the run published at ``url``.

    Parameters
    ----------
    url : str
        Output of ``kernelbank run`` (or ``kernelbank train``): local path or fsspec URL;
        the run its ``LATEST.json`` names is drawn.
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
        URL (or local path) of ``index.html`` in the run's prefix. An older report of
        the same run is replaced.

    Raises
    ------
    FileNotFoundError
        When ``url`` has no published run.
    """
    for name, value in (("samples_per_class", samples_per_class), ("max_classes", max_classes),
                        ("max_error_rows", max_error_rows)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    view = open_published(url, s3_endpoint=s3_endpoint)
    data = collect_view(view, s3_endpoint=s3_endpoint, samples_per_class=samples_per_class,
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
    subtitle = (f"Output <code>{text(redact(url))}</code>, run <code>{text(view.run_id)}</code>"
                + (f", input <code>{text(redact(summary['input']))}</code>" if summary.get("input")
                   else "")
                + (f", finished {text(summary['finished'])}" if summary.get("finished") else "")
                + f". Report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    document = page("kernelbank run report", subtitle, built)
    fs, folder = view.fs, join(view.path, REPORT_DIR)
    remove_tree(fs, folder)
    for name, content in images.items():
        write_bytes(fs, join(folder, name), content)
    write_bytes(fs, join(folder, REPORT_PAGE), document.encode("utf-8"))
    return url_of(fs, join(folder, REPORT_PAGE))


def try_write_report(url: str, **options) -> str | None:
    """:func:`write_report`, with any failure logged as a warning (returns ``None`` then).

    A report is drawn after the run was published; nothing in it can make the run fail.
    """
    from ..stages.common import log
    try:
        return write_report(url, **options)
    except Exception as error:
        log(f"warning: the report of {url} could not be written ({type(error).__name__}: "
            f"{error}); the published run is complete — retry with `kernelbank report {url}`")
        return None
