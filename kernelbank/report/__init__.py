"""Run reports: one offline HTML page with the kernel banks, residual maps and results.

``write_report(OUTPUT)`` reads a run's outputs (``summary.json``, ``banks/``, ``fit/``,
``errors/``, ``train/``) and writes ``OUTPUT/report/index.html`` plus the PNGs it shows.
"""

from .build import REPORT_DIR, REPORT_PAGE, write_report
from .collect import RunData, collect_run
from .maps import BankMaps, bank_maps

__all__ = ["write_report", "collect_run", "RunData", "bank_maps", "BankMaps", "REPORT_DIR",
           "REPORT_PAGE"]
