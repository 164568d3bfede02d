"""Reports: Markdown and plots of lmshield's results."""

from lmshield.reports.psim_report import write_psim_report
from lmshield.reports.scan_report import write_scan_report

__all__ = ["write_psim_report", "write_scan_report"]
