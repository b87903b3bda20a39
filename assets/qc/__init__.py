"""QC assets: the dbt_qc models (their tests as asset checks) and the static QC dashboard."""

from assets.qc.dashboard import qc_dashboard
from assets.qc.dbt_project import qc_models

ASSETS = [qc_models, qc_dashboard]
