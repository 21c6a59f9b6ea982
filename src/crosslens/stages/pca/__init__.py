"""PCA of last-token activations across languages (paper Fig. 3): do parallel questions in different
languages land in the same place? (The numbers that answer it are the similarity stage's.)"""

from crosslens.stages.pca.config import PcaConfig, check, work
from crosslens.stages.registry import StageDef

TABLE = "pca"
SUMMARY = "pca_summary.json"
FIG3 = "fig3_pca.png"

STAGES = (
    StageDef(
        "pca",
        table=TABLE,
        summary=SUMMARY,
        build="crosslens.stages.pca.stage:build",
        section="pca",
        config=PcaConfig,
        default_on=True,
        work=work,
        check=check,
        layers=1,
        report="crosslens.stages.pca.report:PART",
        help="Activations at the last prompt token and their 2-D PCA per layer (Fig. 3).",
    ),
)
