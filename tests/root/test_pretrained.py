"""The pilot shipped inside the package."""

from hyperpilot import Pilot
from hyperpilot.envs.features import FEATURES_VERSION, OBS_NAMES
from hyperpilot.envs.tasks.splits import FamilySpec
from hyperpilot.evaluation import EvalTask, evaluate


def test_shipped_pilot_loads_with_the_current_features():
    pilot = Pilot.load("default")
    assert pilot.bundle.meta["features"]["version"] == FEATURES_VERSION
    assert pilot.bundle.feature_names == OBS_NAMES
    assert pilot.decision_interval == 10


def test_shipped_pilot_beats_constant_adam_on_a_small_heldout_task(tmp_path):
    spec = FamilySpec("logreg_breast_cancer", {})  # a held-out data set, 200 steps
    records = evaluate(
        "default",
        [EvalTask(spec.label, spec)],
        1,
        ["pilot", "constant"],
        tmp_path,
        progress=False,
    )
    test_loss = {r["run"]: r["test_loss"] for r in records}
    assert not any(r["diverged"] for r in records)
    assert test_loss["pilot"] < test_loss["constant"]
