"""Reports: tables (Markdown/CSV/JSON), figures (DET curves, bars, line panels), the HTML
index, and the writers of the ablation and analysis reports."""

from pipeline.report.ablation import write_ablation
from pipeline.report.analysis import write_analysis_files, write_figures
from pipeline.report.det import plot_det
from pipeline.report.html import write_report
from pipeline.report.tables import METRIC_KEYS, markdown_table, read_csv, safe_name, text_table, write_table

__all__ = ["METRIC_KEYS", "markdown_table", "plot_det", "read_csv", "safe_name", "text_table", "write_ablation",
           "write_analysis_files", "write_figures", "write_report", "write_table"]
