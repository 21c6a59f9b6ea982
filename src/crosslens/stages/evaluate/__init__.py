"""Zero-shot cross-lingual evaluation (paper §2.1, Table 1): per item and language, the answer letters'
and (cloze) the full answers' scores at the final layer; then accuracy, consistency and transfer."""

from crosslens.scoring import RECORDS
from crosslens.scoring.options import ScoringOptions
from crosslens.stages.registry import StageDef

TABLE = RECORDS
SUMMARY = "summary.json"

STAGES = (
    StageDef(
        "eval",
        table=TABLE,
        summary=SUMMARY,
        build="crosslens.stages.evaluate.stage:build",
        scoring=tuple(ScoringOptions.model_fields),
        report="crosslens.stages.evaluate.report:PART",
        printer="crosslens.stages.evaluate.cli:print_summary",
        commands="crosslens.stages.evaluate.cli:add_commands",
        help="Letter-choice (and cloze) evaluation with consistency and transfer (paper Table 1).",
    ),
)
