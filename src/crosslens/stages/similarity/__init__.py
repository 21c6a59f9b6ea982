"""Representation similarity across languages (linear CKA, parallel vs non-parallel cosine), per layer,
with bootstrap CIs over items: the PCA picture's question as numbers with uncertainty."""

from crosslens.stages.registry import StageDef
from crosslens.stages.similarity.config import SimilarityConfig, check, precheck, work

TABLE = "similarity"
SUMMARY = "similarity_summary.json"
FIGURES = {"cka": "fig6_cka.png", "cka_matrix": "fig7_cka_matrix.png"}

STAGES = (
    StageDef(
        "similarity",
        table=TABLE,
        summary=SUMMARY,
        build="crosslens.stages.similarity.stage:build",
        section="similarity",
        config=SimilarityConfig,
        work=work,
        check=check,
        precheck=precheck,
        layers=0,
        report="crosslens.stages.similarity.report:PART",
        printer="crosslens.stages.similarity.cli:print_summary",
        help="Linear CKA (debiased and plain) and parallel vs non-parallel cosine between languages, per "
        "layer, with bootstrap CIs over items.",
    ),
)
