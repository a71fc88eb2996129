"""The report card of a run (`scratchlm report RUN`): report.md and a self-contained report.html.

card.py        write_report: the entry point; ReportCard, what the command prints
sections.py    each section read from the run's files (model, tokenizer, data, training,
               evaluations, samples, machine), with its lines for the summary
machine.py     CPU, memory, GPUs, OS, Python, torch and scratchlm versions
document.py    the card before it is a file: sections of paragraphs, fields, tables, figures
markdown.py    the document as Markdown (report.md, linking the plots beside it)
html_page.py   the document as one HTML page (style inline, plots as data URIs, all escaped)
"""

from scratchlm.eval.report.card import ReportCard, write_report

__all__ = ["ReportCard", "write_report"]
