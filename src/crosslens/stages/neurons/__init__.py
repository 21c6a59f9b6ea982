"""Language-specific neurons (LAPE) and a causal test: does deactivating them cause inconsistency?"""

from crosslens.scoring.options import ScoringOptions
from crosslens.stages.neurons.config import NeuronsConfig, precheck, work
from crosslens.stages.registry import StageDef

TABLE = "ablation"  # evaluation records under each ablation
LAPE_TABLE = "neurons"  # activation probabilities, entropy and selection per neuron
SETS_TABLE = "neuron_sets"  # the (layer, neuron) ids each setting deactivates, LAPE and random controls
SUMMARY = "neurons_summary.json"
FIGURES = {"neurons": "fig8_neurons.png", "ablation": "fig9_ablation.png"}

STAGES = (
    StageDef(
        "neurons",
        table=TABLE,
        summary=SUMMARY,
        build="crosslens.stages.neurons.stage:build",
        section="neurons",
        config=NeuronsConfig,
        work=work,
        precheck=precheck,
        scoring=("cloze", "cloze_norm"),
        report="crosslens.stages.neurons.report:PART",
        printer="crosslens.stages.neurons.cli:print_summary",
        help="Language-specific neurons (LAPE) and the causal test: deactivate them, measure accuracy, "
        "consistency with English and transfer against a random-neuron control.",
    ),
)
assert set(STAGES[0].scoring) <= set(ScoringOptions.model_fields)
