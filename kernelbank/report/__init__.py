"""Run reports: one offline HTML page with the kernel banks, residual maps and results.

``write_report(OUTPUT)`` reads the run published at ``OUTPUT`` (its ``summary.json``,
``banks/``, ``fit/``, ``errors/``, ``train/``, wherever its manifest says they live) and
writes ``OUTPUT/runs/<run_id>/report/index.html`` plus the PNGs it shows.
"""

from .build import REPORT_DIR, REPORT_PAGE, try_write_report, write_report
from .collect import RunData, collect_run
from .maps import BankMaps, bank_maps

__all__ = ["write_report", "try_write_report", "collect_run", "RunData", "bank_maps", "BankMaps",
           "REPORT_DIR", "REPORT_PAGE"]
