"""Known answers for the engine: features, rewards and the divergence rule end to end.

The task is one weight `w` with inputs 1 and 2 and targets 0, trained full batch:
the training loss is `mean((w x)^2) = 2.5 w^2`, its gradient `5 w`, the validation
loss (input 1) `w^2`. A few lines of plain Python Adam give every step, so each
observation entry and reward is known without the engine's own code.
"""

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from hyperpilot.envs.actions import Hyperparams
from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.features import OBS_NAMES
from hyperpilot.envs.reward import RewardConfig
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks.base import TaskInstance, mse

F64 = torch.float64
LN = math.log
COL = {name: index for index, name in enumerate(OBS_NAMES)}


def one_weight(w0, horizon, y_train=(0.0, 0.0), y_val=0.0, batch_size=2):
    with torch.device("meta"):
        model = nn.Linear(1, 1, bias=False)
    model = model.to_empty(device="cpu").double()
    with torch.no_grad():
        model.weight.fill_(w0)
    x = torch.tensor([[1.0], [2.0]], dtype=F64)
    return TaskInstance(
        family="one_weight",
        model=model,
        x_train=x,
        y_train=torch.tensor([[y_train[0]], [y_train[1]]], dtype=F64),
        x_val=x[:1],
        y_val=torch.full((1, 1), y_val, dtype=F64),
        x_test=x[:1],
        y_test=torch.zeros(1, 1, dtype=F64),
        loss=mse,
        batch_size=batch_size,
        horizon=horizon,
        data_seed=0,
    )


def adam_by_hand(w, lr, beta1, clip, steps, beta2=0.999, eps=1e-8):
    """Per step: (loss, pre-clip norm, clipped, agreement, dot with the last update, w after)."""
    m = v = 0.0
    previous_grad = previous_update = 0.0
    out = []
    for t in range(1, steps + 1):
        loss, grad = 2.5 * w * w, 5.0 * w
        norm = abs(grad)
        factor = min(clip / (norm + 1e-6), 1.0)
        agreement = grad * previous_grad / max(norm * abs(previous_grad), 1e-30)
        dot = grad * previous_update
        grad *= factor
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        update = -lr * (m / (1 - beta1**t)) / (math.sqrt(v / (1 - beta2**t)) + eps)
        w += update
        previous_grad, previous_update = grad, update
        out.append((loss, norm, factor < 1.0, agreement, dot, w))
    return out


def engine_for(instances, starts, **settings):
    settings = {"device": "cpu", "dtype": "float64", "decision_interval": 2} | settings
    engine = BatchedEngine(len(instances), EnvSettings(**settings))
    episodes = [Episode(i, *s) for i, s in zip(instances, starts)]
    return engine, engine.start(range(len(instances)), episodes)


def keep(engine):
    return engine.advance(Hyperparams(*(v.clone() for v in engine.hparams.values())))


# (w0, lr, beta1, clip, val_available): run 0 is clipped at every step, run 1 never.
# Run 1's gradient norms (about 1) stay below 1: no floor of 1e-30 may change them.
RUNS = [(2.0, 0.1, 0.9, 1.0, True), (-0.2, 0.01, 0.5, 100.0, False)]


def scaled(value, low, high):
    return (value - (low + high) / 2) / ((high - low) / 2)


def test_first_observation_of_a_run():
    instances = [one_weight(w0, 6) for w0, *_ in RUNS]
    _, obs = engine_for(instances, [r[1:] for r in RUNS])
    obs = obs.to(F64)
    for name in (*OBS_NAMES[:6], "clip_fraction", "log_val_ratio", "train_val_gap"):
        assert obs[:, COL[name]].tolist() == [0.0, 0.0], name
    assert obs[:, COL["val_available"]].tolist() == [1.0, 0.0]
    assert obs[:, COL["progress"]].tolist() == [0.0, 0.0]
    expected_lr = [scaled(math.log10(lr), -6, 0) for _, lr, *_ in RUNS]
    expected_beta1 = [scaled(math.log10(1 - b), -3, math.log10(0.5)) for *_, b, _, _ in RUNS]  # fmt: skip
    expected_clip = [scaled(math.log10(c), -2, 3) for *_, c, _ in RUNS]
    assert obs[:, COL["log_lr"]].tolist() == pytest.approx(expected_lr, abs=1e-6)
    assert obs[:, COL["log_one_minus_beta1"]].tolist() == pytest.approx(expected_beta1, abs=1e-6)  # fmt: skip
    assert obs[:, COL["log_clip"]].tolist() == pytest.approx(expected_clip, abs=1e-6)


@pytest.mark.parametrize("kind", ["val_loss", "train_loss", "log_improvement"])
def test_three_windows_end_to_end(kind):
    instances = [one_weight(w0, 6) for w0, *_ in RUNS]
    engine, _ = engine_for(
        instances, [r[1:] for r in RUNS], reward=RewardConfig(kind=kind)
    )
    transitions = [keep(engine) for _ in range(3)]
    for run, (w0, lr, beta1, clip, with_val) in enumerate(RUNS):
        steps = adam_by_hand(w0, lr, beta1, clip, 6)
        first_loss, first_norm = steps[0][0], steps[0][1]
        windows = [steps[2 * j : 2 * j + 2] for j in range(3)]
        mean_loss = [sum(s[0] for s in w) / 2 for w in windows]
        mean_log_norm = [sum(LN(s[1]) for s in w) / 2 for w in windows]
        val = [w0 * w0] + [w[-1][5] ** 2 for w in windows]  # before, then after each
        slow = LN(mean_loss[0])
        for j, (window, transition) in enumerate(zip(windows, transitions)):
            obs = transition.obs[run].to(F64)
            expected = {
                "log_loss_ratio": LN(mean_loss[j] / first_loss),
                "loss_trend_short": LN(mean_loss[j] / mean_loss[j - 1]) if j else 0.0,
                "loss_trend_long": LN(mean_loss[j]) - slow if j else 0.0,
                "log_grad_norm_ratio": mean_log_norm[j] - LN(first_norm),
                "grad_norm_trend": mean_log_norm[j] - mean_log_norm[j - 1]
                if j
                else 0.0,
                "grad_agreement": sum(s[3] for s in window) / 2,
                "clip_fraction": sum(s[2] for s in window) / 2,
                "log_val_ratio": LN(val[j + 1] / val[0]) if with_val else 0.0,
                "train_val_gap": LN(val[j + 1] / mean_loss[j]) if with_val else 0.0,
                "val_available": float(with_val),
                "progress": (j + 1) / 3,
            }
            for name, want in expected.items():
                assert float(obs[COL[name]]) == pytest.approx(want, abs=2e-6), (name, j)
            if j:
                slow = 0.8 * slow + 0.2 * LN(mean_loss[j])
            reward = {
                "val_loss": -val[j + 1] / val[0],
                "train_loss": -mean_loss[j] / first_loss,
                "log_improvement": LN(val[j] / val[j + 1]),
            }[kind]
            assert float(transition.reward[run]) == pytest.approx(reward, rel=1e-6)
            assert float(transition.train_loss[run]) == pytest.approx(mean_loss[j], rel=1e-12)  # fmt: skip
            assert float(transition.val_loss[run]) == pytest.approx(val[j + 1], rel=1e-12)  # fmt: skip
            norms = [s[1] for s in window]
            assert transition.grad_norms[run].tolist() == pytest.approx(
                norms, rel=1e-12
            )
            assert float(transition.grad_norm[run]) == pytest.approx(math.sqrt(norms[0] * norms[1]), rel=1e-12)  # fmt: skip
            dots = sum(s[4] for s in window)
            assert float(transition.grad_update_dot[run]) == pytest.approx(dots, rel=1e-9, abs=1e-15)  # fmt: skip
            assert bool(transition.truncated[run]) == (j == 2)
            assert not transition.terminated[run]
        assert float(engine.params["weight"][run, 0, 0]) == pytest.approx(steps[-1][5], rel=1e-12)  # fmt: skip
        assert torch.equal(engine.last_obs, transitions[-1].obs)
        info = engine.run_infos(transitions[-1])[run]
        assert info["initial_val_loss"] == pytest.approx(val[0], rel=1e-12)
        assert info["best_val_loss"] == pytest.approx(min(val), rel=1e-12)
        assert info["final_val_loss"] == pytest.approx(val[-1], rel=1e-12)
        assert info["diverged"] is False
    assert engine.step_count.tolist() == [6, 6]
    assert not engine.running.any()


def test_the_terminal_term_at_the_last_decision():
    instances = [one_weight(w0, 4) for w0, *_ in RUNS]
    engine, _ = engine_for(
        instances, [r[1:] for r in RUNS], reward=RewardConfig(terminal_weight=3.0)
    )
    rewards = [keep(engine).reward for _ in range(2)]
    for run, (w0, lr, beta1, clip, _) in enumerate(RUNS):
        steps = adam_by_hand(w0, lr, beta1, clip, 4)
        ratio = [steps[1][5] ** 2 / w0**2, steps[3][5] ** 2 / w0**2]
        assert float(rewards[0][run]) == pytest.approx(-ratio[0], rel=1e-6)
        assert float(rewards[1][run]) == pytest.approx(-ratio[1] - 3.0 * ratio[1], rel=1e-6)  # fmt: skip


def test_a_run_that_has_ended_gets_zero_reward_and_stands_still():
    """Run 0 has a horizon of 2 steps, run 1 of 6: run 0 ends after one decision."""
    instances = [one_weight(2.0, 2), one_weight(-1.0, 6)]
    engine, _ = engine_for(instances, [r[1:] for r in RUNS])
    first = keep(engine)
    assert first.truncated.tolist() == [True, False]
    w_end = float(engine.params["weight"][0, 0, 0])
    second = keep(engine)
    assert float(second.reward[0]) == 0.0
    assert not second.truncated[0] and not second.terminated[0]
    assert float(engine.params["weight"][0, 0, 0]) == w_end
    assert engine.step_count.tolist() == [2, 4]
    assert engine.decisions_left().tolist() == [0, 1]


# ------------------------------------------------------------------ divergence
# With beta1 0.5, beta2 0.75 and eps 0, Adam's first step is exactly lr against the
# gradient's sign: from w = 1 (loss 2.5), lr 3 lands on w = -2, loss 10 = 4 x 2.5.
EXACT = {"beta2": 0.75, "eps": 0.0}
HEALTHY = (-1.0, 0.01, 0.5, 100.0, True)


def check_healthy_run(engine, run, steps):
    w0, lr, beta1, clip, _ = HEALTHY
    expected = adam_by_hand(w0, lr, beta1, clip, steps, **EXACT)[-1][5]
    assert float(engine.params["weight"][run, 0, 0]) == pytest.approx(expected, rel=1e-12)  # fmt: skip


@pytest.mark.parametrize(
    ("factor", "diverged"),
    [(4.0, False), (3.999, True), (100.0, False)],
    ids=["exactly-at-factor", "just-above", "default"],
)
def test_a_loss_above_factor_times_the_first_diverges(factor, diverged):
    instances = [one_weight(1.0, 6), one_weight(HEALTHY[0], 6)]
    engine, _ = engine_for(
        instances, [(3.0, 0.5, 1e3, True), HEALTHY[1:]], divergence_factor=factor, **EXACT
    )  # fmt: skip
    transition = keep(engine)
    assert transition.terminated.tolist() == [diverged, False]
    assert float(transition.train_loss[0]) == pytest.approx((2.5 + 10.0) / 2, rel=1e-15)
    if diverged:
        # the second step never happened: w stays at -2, one step counted, three
        # decisions were left, so the penalty is 3 + 1
        assert float(engine.params["weight"][0, 0, 0]) == -2.0
        assert engine.step_count.tolist() == [1, 2]
        assert float(transition.reward[0]) == -4.0
        assert engine.running.tolist() == [False, True]
        assert bool(torch.isfinite(transition.obs).all())
        info = engine.run_infos(transition)[0]
        assert info["diverged"] is True and info["final_val_loss"] == 4.0
    else:
        assert engine.step_count.tolist() == [2, 2]
        assert float(transition.reward[0]) > -10.0
    check_healthy_run(engine, 1, 2)
    keep(engine)
    check_healthy_run(engine, 1, 4)


def test_a_non_finite_loss_diverges_at_once_and_its_step_is_masked():
    # run 0's targets hold a NaN, so its first loss and gradient are NaN
    instances = [one_weight(1.0, 6, y_train=(math.nan, 0.0)), one_weight(HEALTHY[0], 6)]
    engine, _ = engine_for(instances, [(0.1, 0.9, 1.0, True), HEALTHY[1:]])
    transition = keep(engine)
    assert transition.terminated.tolist() == [True, False]
    assert float(engine.params["weight"][0, 0, 0]) == 1.0
    assert engine.adam.exp_avg[0].tolist() == [0.0]
    assert engine.adam.exp_avg_sq[0].tolist() == [0.0]
    assert engine.step_count.tolist() == [0, 2]
    # no step taken: all 3 decisions were left, so the penalty is 3 + 1
    assert float(transition.reward[0]) == -4.0
    w0, lr, beta1, clip, _ = HEALTHY
    w = adam_by_hand(w0, lr, beta1, clip, 2)[-1][5]
    assert float(engine.params["weight"][1, 0, 0]) == pytest.approx(w, rel=1e-12)
    assert float(transition.reward[1]) == pytest.approx(-(w**2) / w0**2, rel=1e-6)
    later = keep(engine)
    assert float(later.reward[0]) == 0.0 and not later.terminated[0]
    assert float(engine.params["weight"][0, 0, 0]) == 1.0
    w = adam_by_hand(w0, lr, beta1, clip, 4)[-1][5]
    assert float(engine.params["weight"][1, 0, 0]) == pytest.approx(w, rel=1e-12)


def test_non_finite_parameters_at_the_window_end_diverge():
    # lr = inf: the loss seen in the window is finite, the parameter after it is not
    instances = [one_weight(1.0, 3), one_weight(HEALTHY[0], 3)]
    engine, _ = engine_for(
        instances,
        [(math.inf, 0.9, 1e3, True), HEALTHY[1:]],
        decision_interval=1,
        reward=RewardConfig(divergence_penalty=0.5),
    )
    transition = keep(engine)
    assert math.isfinite(float(transition.train_loss[0]))
    assert transition.terminated.tolist() == [True, False]
    # the step counted (it was taken), 2 of 3 decisions left: -0.5 * (2 + 1)
    assert engine.step_count.tolist() == [1, 1]
    assert float(transition.reward[0]) == -1.5
    assert engine.running.tolist() == [False, True]


def test_decisions_left_rounds_up():
    instances = [one_weight(1.0, 7), one_weight(1.0, 6)]
    engine, _ = engine_for(instances, [HEALTHY[1:]] * 2, decision_interval=3)
    assert engine.decisions_left().tolist() == [3, 2]
    keep(engine)
    assert engine.decisions_left().tolist() == [2, 1]
    assert engine.progress().tolist() == [3 / 7, 0.5]
    assert engine.progress().dtype == F64


def test_a_horizon_that_is_not_a_multiple_of_k_stops_on_time():
    w0, lr, beta1, clip, _ = RUNS[0]
    engine, _ = engine_for([one_weight(w0, 5)], [RUNS[0][1:]])
    transitions = [keep(engine) for _ in range(3)]
    assert [bool(t.truncated[0]) for t in transitions] == [False, False, True]
    assert engine.step_count.tolist() == [5]
    w = adam_by_hand(w0, lr, beta1, clip, 5)[-1][5]
    assert float(engine.params["weight"][0, 0, 0]) == pytest.approx(w, rel=1e-12)


def test_the_best_validation_loss_is_the_lowest_while_running():
    # from 0.3 with lr 0.2 and momentum 0.9, w overshoots 0: val falls, then rises
    start = (0.3, 0.2, 0.9, 100.0, True)
    w0, lr, beta1, clip, _ = start
    engine, _ = engine_for([one_weight(w0, 6)], [start[1:]])
    transitions = [keep(engine) for _ in range(3)]
    val = [w0**2] + [s[5] ** 2 for s in adam_by_hand(w0, lr, beta1, clip, 6)[1::2]]
    assert min(val) < val[-1]  # the check has teeth
    info = engine.run_infos(transitions[-1])[0]
    assert info["best_val_loss"] == pytest.approx(min(val), rel=1e-12)


def test_a_diverged_runs_validation_loss_is_not_its_best():
    # validation target -2: the step to w = -2 that diverges (loss 10 > 3.999 x 2.5)
    # brings the validation loss (w + 2)^2 from 9 to 0; a best it must not count
    instances = [one_weight(1.0, 6, y_val=-2.0), one_weight(HEALTHY[0], 6)]
    engine, _ = engine_for(
        instances,
        [(3.0, 0.5, 1e3, True), HEALTHY[1:]],
        divergence_factor=3.999,
        **EXACT,
    )
    transition = keep(engine)
    info = engine.run_infos(transition)[0]
    assert info["diverged"] is True and info["final_val_loss"] == 0.0
    assert info["best_val_loss"] == 9.0 and info["initial_val_loss"] == 9.0


@pytest.mark.parametrize("seed", range(4))
def test_a_diverged_run_stays_diverged_for_the_rest_of_the_window(seed):
    """One row's target is NaN, batches of one row: one of the two steps sees it."""
    instance = one_weight(1.0, 6, y_train=(math.nan, 0.0), batch_size=1)
    instance = dataclasses.replace(instance, data_seed=seed)
    engine, _ = engine_for([instance], [(0.1, 0.9, 1.0, True)])
    transition = keep(engine)
    assert transition.terminated.tolist() == [True]
    # the NaN row came first (no step) or second (one step), never a step after it
    assert engine.step_count.tolist() in ([0], [1])
    assert math.isfinite(float(engine.params["weight"][0, 0, 0]))


def test_restarting_one_run_leaves_the_other_alone():
    instances = [one_weight(w0, 6) for w0, *_ in RUNS]
    engine, _ = engine_for(instances, [r[1:] for r in RUNS])
    keep(engine)
    before = engine.last_obs.clone()
    fresh = one_weight(0.5, 4)
    obs = engine.start([0], [Episode(fresh, 0.01, 0.9, 100.0, True)])
    assert engine.step_count.tolist() == [0, 2]
    assert engine.running.tolist() == [True, True]
    assert torch.equal(engine.last_obs[1], before[1])
    assert torch.equal(engine.last_obs[0], obs[0])
    assert float(obs[0, COL["progress"]]) == 0.0
    transitions = [keep(engine), keep(engine)]
    # run 0 restarted from scratch: its own first loss, val and Adam state
    steps = adam_by_hand(0.5, 0.01, 0.9, 100.0, 4)
    assert float(engine.params["weight"][0, 0, 0]) == pytest.approx(steps[-1][5], rel=1e-12)  # fmt: skip
    ratio = LN((steps[2][0] + steps[3][0]) / 2 / steps[0][0])
    assert float(transitions[-1].obs[0, COL["log_loss_ratio"]]) == pytest.approx(ratio, abs=2e-6)  # fmt: skip
    assert float(transitions[-1].reward[0]) == pytest.approx(-steps[3][5] ** 2 / 0.25, rel=1e-6)  # fmt: skip
    assert transitions[-1].truncated.tolist() == [True, True]
    # run 1 went on as if nothing happened, its features included
    w0, lr, beta1, clip, _ = RUNS[1]
    steps = adam_by_hand(w0, lr, beta1, clip, 6)
    ratio = LN((steps[4][0] + steps[5][0]) / 2 / steps[0][0])
    assert float(transitions[-1].obs[1, COL["log_loss_ratio"]]) == pytest.approx(ratio, abs=2e-6)  # fmt: skip
    assert float(engine.params["weight"][1, 0, 0]) == pytest.approx(steps[-1][5], rel=1e-12)  # fmt: skip
    assert float(transitions[-1].reward[1]) == pytest.approx(-steps[-1][5] ** 2 / w0**2, rel=1e-6)  # fmt: skip


def test_start_checks_its_arguments():
    instances = [one_weight(1.0, 6), one_weight(1.0, 6)]
    engine = BatchedEngine(2, EnvSettings(device="cpu"))
    episodes = [Episode(i, 0.01, 0.9, 1.0, True) for i in instances]
    with pytest.raises(ValueError, match=r"^start\(\) needs one episode per run$"):
        engine.start([0, 1], episodes[:1])
    with pytest.raises(ValueError, match=r"^the first start\(\) must load all 2 runs$"):
        engine.start([0], episodes[:1])


def test_a_float32_engine_keeps_its_dtypes():
    """Parameters and hyperparameters in float32; losses, progress in float64."""
    instances = [one_weight(w0, 6) for w0, *_ in RUNS]
    engine, obs = engine_for(instances, [r[1:] for r in RUNS], dtype="float32")
    hparams = Hyperparams(*(v.to(F64) for v in engine.hparams.values()))
    transition = engine.advance(hparams)
    assert obs.dtype == transition.obs.dtype == torch.float32
    assert transition.reward.dtype == torch.float32
    assert transition.hparams.lr.dtype == torch.float32
    assert engine.flat_params.dtype == torch.float32
    for value in (transition.val_loss, transition.train_loss, engine.first_val, engine.progress()):  # fmt: skip
        assert value.dtype == F64


def test_a_model_of_several_tensors_matches_torch_adam():
    """Two layers (four tensors), lr and beta1 changed after each window."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1))
    model = model.to_empty(device="cpu").double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=F64))
    instance = dataclasses.replace(one_weight(1.0, 6), model=model)
    instance = dataclasses.replace(instance, y_train=torch.tensor([[1.0], [-1.0]], dtype=F64))  # fmt: skip
    engine, _ = engine_for([instance], [(0.05, 0.9, 0.5, True)])
    reference = copy.deepcopy(model)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1.0)
    for lr, beta1, clip in [(0.05, 0.9, 0.5), (0.02, 0.5, 10.0), (0.1, 0.8, 0.1)]:
        engine.advance(Hyperparams(*(torch.tensor([v], dtype=F64) for v in (lr, beta1, clip))))  # fmt: skip
        optimizer.param_groups[0].update(lr=lr, betas=(beta1, 0.999))
        for _ in range(2):
            optimizer.zero_grad()
            mse(reference(instance.x_train), instance.y_train).backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
            optimizer.step()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(engine.params[name][0], param.detach(), rtol=1e-12, atol=1e-14)  # fmt: skip


def test_residual_actions_move_from_the_warmup_cosine_base():
    """lr 0.1 over 6 steps: warmup ceil(0.3) = 1 step, then cosine over 5."""
    engine, _ = engine_for([one_weight(1.0, 6)], [(0.1, 0.9, 2.0, True)], action_mode="residual")  # fmt: skip
    first = engine.act(torch.tensor([[1.0, -1.0, 0.0]]))
    # step 0: the base lr is 0.1 x (0 + 1) / (1 + 1); beta1 and clip stay at the start
    lr = 0.05 * 10**0.5
    values = [float(v[0]) for v in first.hparams.values()]
    assert values == pytest.approx([lr, 1 - 0.1 * 10**0.25, 2.0], rel=1e-12)
    second = engine.act(torch.tensor([[0.0, 0.0, 1.0]]))
    # step 2: progress (2 - 1) / 5 of the cosine; beta1 back at its start value
    lr = 0.1 * 0.5 * (1 + math.cos(math.pi * 0.2))
    values = [float(v[0]) for v in second.hparams.values()]
    assert values == pytest.approx([lr, 0.9, 2.0 * 10**0.5], rel=1e-12)
