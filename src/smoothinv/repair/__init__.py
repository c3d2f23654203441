"""Removing a found backdoor by fine-tuning on a small clean set (issue 15).

    from smoothinv.repair import Findings, repair_model
    result = repair_model(model, clean_images, clean_labels, Findings(targets=(6,), recovered=triggers))
    result.after.clean_accuracy, result.after.asr, result.repaired.model

`methods` holds the repair methods (one class each, one call shape), `recovered` the trigger
files a scan writes and a repair reads, `run` the split-measure-repair-measure protocol.
"""

from .methods import REPAIRS, FineTuneRecipe, Findings, Repair, Repaired, build_repair
from .invertune import InverTune  # registers "invertune"
from .recovered import RecoveredTrigger, load_perturbation, load_recovered, save_recovered
from .run import HOLDOUT, Measurement, Probe, RepairResult, Split, measure, repair_model

__all__ = ["REPAIRS", "HOLDOUT", "FineTuneRecipe", "Findings", "InverTune", "Measurement", "Probe", "Repair", "Repaired",
           "RecoveredTrigger", "RepairResult", "Split", "build_repair", "load_perturbation", "load_recovered",
           "measure", "repair_model", "save_recovered"]
