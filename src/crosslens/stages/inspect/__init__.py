"""One prompt looked at through a lens (the per-prompt logit-lens picture): per layer and position,
the lens's top next tokens, their probabilities and languages, and the entropy.

``crosslens inspect --prompt TEXT`` (or ``--dataset D --item ID --language L``) draws it for one
prompt; as a stage (config section ``inspect``, command ``crosslens inspect-items``) it reads the
first item of every language into the ``inspect/`` table and the report shows one picture each.
"""

from crosslens.stages.inspect.config import INSPECT_SCORING, InspectConfig, check, precheck, work
from crosslens.stages.registry import StageDef

TABLE = "inspect"
SUMMARY = "inspect_summary.json"

STAGES = (
    StageDef(
        "inspect",
        table=TABLE,
        summary=SUMMARY,
        build="crosslens.stages.inspect.stage:build",
        section="inspect",
        config=InspectConfig,
        command="inspect-items",  # `crosslens inspect` is the one-prompt command (commands=)
        work=work,
        check=check,
        precheck=precheck,
        layers=0,
        scoring=INSPECT_SCORING,
        report="crosslens.stages.inspect.report:PART",
        printer="crosslens.stages.inspect.cli:print_summary",
        commands="crosslens.stages.inspect.cli:add_commands",
        help="The lens picture of the first item in every language: per layer and position, the top "
        "next tokens, their probabilities and languages, and the entropy.",
    ),
)
