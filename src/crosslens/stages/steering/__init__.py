"""Cross-lingual activation steering (paper §2.3, Eq. 8, §4.3): add gamma * v(m -> en) at one layer and
watch accuracy, consistency with English and transfer move, against random and wrong-language
controls with paired tests."""

from crosslens.stages.registry import StageDef
from crosslens.stages.steering.config import SteeringConfig, check, precheck, work

TABLE = "steer"
SUMMARY = "steer_summary.json"

STAGES = (
    StageDef(
        "steer",
        table=TABLE,
        summary=SUMMARY,
        build="crosslens.stages.steering.stage:build",
        section="steering",
        config=SteeringConfig,
        work=work,
        check=check,
        precheck=precheck,
        scoring=("cloze", "cloze_norm"),
        report="crosslens.stages.steering.report:PART",
        printer="crosslens.stages.steering.cli:print_summary",
        help="Cross-lingual activation steering sweep over layers and gammas (Figs. 4, 5, 7-11).",
    ),
)
