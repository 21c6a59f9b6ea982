"""Which language the lens's next-token distribution is in, per layer (Wendler et al. 2024; Wu et al.
2024): the mass on English, on the prompt's language, on other languages and on none, and the entropy,
through any lens."""

from crosslens.stages.latent.config import LATENT_SCORING, LatentConfig, check, precheck
from crosslens.stages.registry import StageDef

TABLE = "latent"
SUMMARY = "latent_summary.json"
FIGURE = "fig11_latent.png"

STAGES = (
    StageDef(
        "latent",
        table=TABLE,
        summary=SUMMARY,
        build="crosslens.stages.latent.stage:build",
        section="latent",
        config=LatentConfig,
        check=check,
        precheck=precheck,
        layers=0,
        scoring=LATENT_SCORING,
        report="crosslens.stages.latent.report:PART",
        printer="crosslens.stages.latent.cli:print_summary",
        help="Latent language: the lens's next-token mass on English, the prompt's language, other "
        "languages and none, and its entropy, per layer.",
    ),
)
