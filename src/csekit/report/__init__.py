"""Reports of training runs: collect (run folder -> data), plots, page (what is shown), render (HTML, Markdown)."""

from __future__ import annotations

from csekit.report.collect import RunData, collect_run
from csekit.report.page import Page, build_page
from csekit.report.render import render_html, render_markdown, write_report

__all__ = ["Page", "RunData", "build_page", "collect_run", "render_html", "render_markdown", "write_report"]
