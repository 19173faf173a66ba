"""Read study results (parquet or MLflow) and turn them into the thesis's tables and figures.

Analysis reads exported results only; it never imports Ray, the study driver or training code.
"""

from analysis.load import Study, load_study, study_from_mlflow
from analysis.stats import SearchSummary, paired_differences, search_summary
from analysis.tables import figure3_frame, figure5_frame, render_table1, table1, table2, table3

__all__ = [
    "Study", "load_study", "study_from_mlflow",
    "table1", "render_table1", "figure3_frame", "table2", "figure5_frame", "table3",
    "paired_differences", "search_summary", "SearchSummary",
]
