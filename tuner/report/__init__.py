"""HTML reports of a study: interactive plots (plotly) and the same plots as PNG files.

>>> from tuner.report import write_report
>>> files = write_report(storage, "reg", Path("report"))  # doctest: +SKIP
>>> files.html
PosixPath('report/index.html')
"""

from tuner.report._build import ReportFiles, write_report

__all__ = ["ReportFiles", "write_report"]
