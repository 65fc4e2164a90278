"""`moepack verify`: prove a converted folder before it is deployed (see pipeline.py for the levels).

    report = verify(out, source=None, level="full", progress=True)
    report.ok, report.exit_code, report.verdict, report.rows, report.to_json()
    render_report(report, console)      # rich tables per check + the one-line verdict
"""
from .numeric import TOLERANCES
from .pipeline import LEVELS, verify
from .report import CHECKS, Report, Row, render_report

__all__ = ["verify", "render_report", "Report", "Row", "CHECKS", "LEVELS", "TOLERANCES"]
