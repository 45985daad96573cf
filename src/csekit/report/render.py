"""Lay a :class:`~csekit.report.page.Page` out as one self-contained HTML file (figures as base64 PNG
data URIs: the file can be mailed or archived alone) and as Markdown with the PNG files beside it."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from csekit.atomic import write_bytes, write_text
from csekit.errors import CsekitError
from csekit.report.page import Page, Table

PAGES = ("report.html", "report.md")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1f2328; background: #ffffff; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: right; }
th { background: #f6f8fa; } .text { text-align: left; }
figure { margin: 1em 0; } figcaption { color: #57606a; font-size: .9em; }
img { max-width: 100%; }
"""


def render_html(page: Page) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{html.escape(page.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
             f"<h1>{html.escape(page.title)}</h1>"]  # fmt: skip
    for section in page.sections:
        parts.append(f"<section>\n<h2>{html.escape(section.title)}</h2>")
        parts.extend(f"<p>{html.escape(line)}</p>" for line in section.text)
        if section.table is not None:
            parts.append(_html_table(section.table))
        if section.figure is not None:
            data = base64.b64encode(section.figure.png).decode("ascii")
            caption = html.escape(section.figure.caption)
            parts.append(f'<figure>\n<img src="data:image/png;base64,{data}" alt="{caption}">\n'
                         f"<figcaption>{caption}</figcaption>\n</figure>")  # fmt: skip
        parts.append("</section>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _html_table(table: Table) -> str:
    classes = ['' if numeric else ' class="text"' for numeric in table.numeric()]
    header = "".join(f"<th{c}>{html.escape(cell)}</th>" for c, cell in zip(classes, table.header))
    rows = "\n".join("<tr>" + "".join(f"<td{c}>{html.escape(cell)}</td>" for c, cell in zip(classes, row)) + "</tr>"
                     for row in table.rows)  # fmt: skip
    return f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


def render_markdown(page: Page) -> str:
    """Markdown that links each figure as ``NAME.png``; :func:`write_report` writes those files."""
    lines = [f"# {page.title}", ""]
    for section in page.sections:
        lines += [f"## {section.title}", ""]
        for line in section.text:
            lines += [_markdown_text(line), ""]
        if section.table is not None:
            lines += [_markdown_table(section.table), ""]
        if section.figure is not None:
            lines += [f"![{section.figure.caption}]({section.figure.name}.png)", ""]
    return "\n".join(lines)


def _markdown_text(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _markdown_table(table: Table) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    aligns = ["---:" if numeric else "---" for numeric in table.numeric()]  # numbers right, text left
    return "\n".join([row(table.header), "| " + " | ".join(aligns) + " |", *(row(cells) for cells in table.rows)])


def check_report_folder(folder: Path) -> None:
    """Refuse a non-empty folder that is not an earlier report: writing one would replace files csekit did
    not write."""
    if folder.is_dir() and any(folder.iterdir()) and not all((folder / name).is_file() for name in PAGES):
        raise CsekitError(f"{folder} holds files csekit did not write (no earlier report.html and report.md); "
                          "give a new or empty folder")  # fmt: skip


def write_report(page: Page, output: str | Path) -> tuple[Path, Path]:
    """``report.html``, ``report.md`` and one PNG per figure in ``output``; returns the two pages' paths."""
    folder = Path(output)
    check_report_folder(folder)
    for section in page.sections:
        if section.figure is not None:
            write_bytes(folder / f"{section.figure.name}.png", section.figure.png)
    html_path, markdown_path = (folder / name for name in PAGES)
    write_text(html_path, render_html(page))
    write_text(markdown_path, render_markdown(page))
    return html_path, markdown_path
