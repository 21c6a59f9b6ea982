"""The word tasks of Wendler et al. (2024), "Do Llamas Work in English?": translation, repetition and
cloze with single-word answers; per layer and lens, P(the word in the target language) vs P(the
same concept in English), the field's best-known picture of "latent English"."""

from crosslens.stages.registry import StageDef
from crosslens.stages.words.config import WordsConfig, check, precheck, work

TABLE = "words"
SUMMARY = "words_summary.json"
FIGURES = {"curves": "fig_words.png", "latent": "fig_words_latent.png"}

STAGES = (
    StageDef(
        "words",
        table=TABLE,
        summary=SUMMARY,
        build="crosslens.stages.words.stage:build",
        section="words",
        config=WordsConfig,
        work=work,
        check=check,
        precheck=precheck,
        layers=0,
        report="crosslens.stages.words.report:PART",
        printer="crosslens.stages.words.cli:print_summary",
        help="Word tasks (Wendler et al. 2024): P(target word) vs P(English word) per layer and lens, "
        "for translation, repetition and cloze over a parallel word list.",
    ),
)
