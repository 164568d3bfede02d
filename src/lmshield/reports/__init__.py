"""Reports: Markdown and plots of lmshield's results."""

from lmshield.reports.scan_report import write_scan_report

__all__ = ["write_scan_report"]
