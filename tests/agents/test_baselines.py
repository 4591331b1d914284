import dataclasses
import math

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from hyperpilot.agents.baselines import (
    TUNING_GRID,
    AutoClip,
    BlindControl,
    ConstantLR,
    HypergradientAdam,
    OneCycle,
    Plateau,
    ProgressReplay,
    RandomControl,
    ReplayControl,
    WarmupCosine,
    median_schedule,
    progress_median_schedule,
)
from hyperpilot.agents.controllers import ControllerState, RunSpec, run_episode
from hyperpilot.bundle import load_bundle, save_bundle
from hyperpilot.envs import BatchedTrainingVecEnv
from hyperpilot.envs.actions import (
    ACTION_RANGES,
    HPARAM_NAMES,
    Hyperparams,
    base_schedule,
    warmup_cosine,
)
from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.features import N_FEATURES, OBS_NAMES
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks import make_family

CPU = EnvSettings(device="cpu")
K = CPU.decision_interval


class Recorder:
    """Wraps a controller and logs every (state, chosen hparams)."""

    def __init__(self, inner):
        self.inner, self.name, self.log = inner, inner.name, []

    def reset(self, spec):
        self.inner.reset(spec)

    def act(self, state):
        hparams = self.inner.act(state)
        self.log.append((state, hparams))
        return hparams


def rollout(controller, n=2, seed=0, settings=CPU):
    """Runs `controller` on fresh quadratic_2d runs; returns engine, log, transitions."""
    family = make_family("quadratic_2d")
    rng = np.random.default_rng(seed)
    engine = BatchedEngine(n, settings)
    engine.start(
        range(n), [Episode(family.sample(rng), 1e-3, 0.9, 1.0, True) for _ in range(n)]
    )
    recorder = Recorder(controller)
    transitions = []
    run_episode(engine, recorder, lambda state, t: transitions.append(t))
    return engine, recorder.log, transitions


def make_state(n=2, *, val=1.0, step=0, total=100, norms=None, dot=0.0, hparams=None):
    """A hand-made ControllerState with float32 hparams."""
    hparams = hparams or Hyperparams.full(n, 1e-3, 0.9, 1.0)
    return ControllerState(
        features=torch.zeros(n, N_FEATURES),
        step=torch.full((n,), step, dtype=torch.long),
        total_steps=torch.full((n,), total, dtype=torch.long),
        train_loss=torch.full((n,), math.nan, dtype=torch.float64),
        val_loss=torch.as_tensor(val, dtype=torch.float64).expand(n),
        grad_norms=torch.zeros(n, 0) if norms is None else norms,
        grad_update_dot=torch.as_tensor(dot, dtype=torch.float64).expand(n),
        hparams=hparams,
    )


def spec(n=2, total=100):
    return RunSpec(
        torch.full((n,), total, dtype=torch.long),
        K,
        Hyperparams.full(n, 1e-3, 0.9, 1.0),
    )


def lrs(log):
    return torch.stack([h.lr for _, h in log])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A fresh PPO's policy, saved with non-trivial normalization statistics."""
    env = BatchedTrainingVecEnv(family="quadratic_2d", n=4, device="cpu")
    venv = VecNormalize(env)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=16, seed=0)
    rng = np.random.default_rng(0)
    venv.obs_rms.mean = rng.uniform(-0.5, 0.5, N_FEATURES)
    venv.obs_rms.var = rng.uniform(0.5, 2.0, N_FEATURES)
    path = save_bundle(
        tmp_path_factory.mktemp("bundle") / "pilot",
        policy=model.policy,
        obs_rms=venv.obs_rms,
        settings=env.settings,
        default_clip=1.0,
    )
    return load_bundle(path)


SENSIBLE = {
    "constant": lambda: ConstantLR(1e-2),
    "warmup_cosine": lambda: WarmupCosine(3e-2),
    "one_cycle": lambda: OneCycle(3e-2),
    "plateau": lambda: Plateau(1e-2),
    "autoclip": lambda: AutoClip(1e-2),
    "hypergradient": lambda: HypergradientAdam(1e-2),
    "random": lambda: RandomControl(HPARAM_NAMES, "residual", 0),
    "replay": lambda: ReplayControl({"lr": [1e-3, 1e-2, 3e-3], "beta1": [0.8]}),
}


@pytest.mark.parametrize("make", SENSIBLE.values(), ids=SENSIBLE.keys())
def test_every_controller_runs_a_real_episode_in_range(make):
    controller = make()
    engine, log, transitions = rollout(controller)
    assert controller.name and isinstance(controller.name, str)
    assert not any(bool(t.terminated.any()) for t in transitions)
    assert (engine.step_count == engine.horizon).all()
    assert len(log) == len(transitions) == 10
    for state, hparams in log:
        for name, value in zip(HPARAM_NAMES, hparams.values()):
            assert value.shape == (2,)
            assert value.dtype == state.hparams.lr.dtype
            assert value.device == state.hparams.lr.device
            low, high = ACTION_RANGES[name]
            assert ((value >= low) & (value <= high)).all(), name
    assert (transitions[-1].val_loss < engine.first_val).all()


def test_tuning_grid():
    assert TUNING_GRID == (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def test_constant_lr_holds_lr_and_leaves_beta1_and_clip():
    _, log, _ = rollout(ConstantLR(3e-3))
    torch.testing.assert_close(lrs(log), torch.full((10, 2), 3e-3))
    for _, hparams in log:
        assert (hparams.beta1 == 0.9).all() and (hparams.clip == 1.0).all()


def test_warmup_cosine_matches_the_base_schedule_at_window_starts():
    _, log, _ = rollout(WarmupCosine(1e-2))
    for state, hparams in log:
        expected = warmup_cosine(
            state.step, state.total_steps, torch.full((2,), 1e-2, dtype=torch.float64)
        ).clamp(1e-6, 1.0)
        torch.testing.assert_close(hparams.lr, expected.float())
        assert (hparams.beta1 == 0.9).all() and (hparams.clip == 1.0).all()
    assert log[-1][1].lr.max() < 1e-3  # decays towards 0


def test_warmup_cosine_clamps_to_the_lr_range():
    controller = WarmupCosine(1e-2)
    controller.reset(spec())
    assert (controller.act(make_state(step=99)).lr >= 1e-6).all()
    assert (WarmupCosine(10.0).act(make_state(step=50)).lr <= 1.0).all()


def torch_one_cycle(max_lr, total):
    """torch's OneCycleLR lr and beta1 before each of `total` steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr, total_steps=total
    )
    lr, beta1 = [], []
    for _ in range(total):
        lr.append(optimizer.param_groups[0]["lr"])
        beta1.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    return torch.tensor(lr, dtype=torch.float64), torch.tensor(
        beta1, dtype=torch.float64
    )


def test_one_cycle_matches_torch_at_window_starts_of_a_real_run():
    _, log, _ = rollout(OneCycle(3e-2))
    lr, beta1 = torch_one_cycle(3e-2, 100)
    for state, hparams in log:
        torch.testing.assert_close(hparams.lr, lr[state.step].float())
        torch.testing.assert_close(hparams.beta1, beta1[state.step].float())
        assert (hparams.clip == 1.0).all()


@pytest.mark.parametrize("total", [3, 5, 37, 1000], ids=lambda t: f"total-{t}")
def test_one_cycle_matches_torch_at_every_step(total):
    lr, beta1 = torch_one_cycle(1e-2, total)
    controller = OneCycle(1e-2)
    controller.reset(spec(total=total))
    hparams = Hyperparams.full(total, 1e-3, 0.9, 1.0, dtype=torch.float64)
    state = dataclasses.replace(
        make_state(total, total=total, hparams=hparams), step=torch.arange(total)
    )
    out = controller.act(state)
    torch.testing.assert_close(out.lr, lr.clamp(1e-6, 1.0), rtol=1e-12, atol=0)
    torch.testing.assert_close(out.beta1, beta1, rtol=1e-12, atol=0)


def test_plateau_cuts_after_patience_non_improving_decisions_like_torch():
    # run 0 plateaus (0.89995 is within the 1e-4 relative threshold); run 1 improves
    flat = [1.0, 0.9, 0.9, 0.89995, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8]
    controller = Plateau(1e-2, factor=0.5, patience=2)
    controller.reset(spec())
    got = []
    for i, value in enumerate(flat):
        state = make_state(val=[value, 1.0 - 0.05 * i], step=10 * i)
        got.append(controller.act(state).lr)
    got = torch.stack(got)
    expected = [1e-2] * 4 + [5e-3] * 3 + [2.5e-3] * 3
    torch.testing.assert_close(got[:, 0], torch.tensor(expected))
    torch.testing.assert_close(got[:, 1], torch.full((10,), 1e-2))
    # the same as torch's scheduler stepped once per decision
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=2
    )
    reference = []
    for value in flat:
        scheduler.step(value)
        reference.append(optimizer.param_groups[0]["lr"])
    torch.testing.assert_close(got[:, 0], torch.tensor(reference, dtype=torch.float32))


def test_plateau_never_cuts_below_the_lr_range():
    controller = Plateau(2e-6, patience=0)
    controller.reset(spec())
    for _ in range(5):
        lr = controller.act(make_state(val=1.0)).lr
    assert (lr == torch.tensor(1e-6)).all()


def test_autoclip_is_the_percentile_of_the_history():
    controller = AutoClip(1e-2, percentile=25.0)
    controller.reset(spec())
    start = make_state(hparams=Hyperparams.full(2, 1e-3, 0.9, 3.0))
    out = controller.act(start)
    assert (out.clip == 3.0).all() and (out.lr == 1e-2).all()  # no history yet
    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(4):
        norms = torch.rand(2, K, generator=generator) * 10 + 0.1
        history.append(norms)
        out = controller.act(make_state(norms=norms))
        expected = torch.quantile(torch.cat(history, 1).double(), 0.25, dim=1)
        torch.testing.assert_close(out.clip, expected.float())
    assert (out.beta1 == 0.9).all()


def test_autoclip_clamps_and_ignores_non_finite_norms():
    controller = AutoClip(1e-3)
    controller.reset(spec())
    tiny = torch.full((2, K), 1e-5)
    assert (controller.act(make_state(norms=tiny)).clip == 1e-2).all()
    controller.reset(spec())
    norms = torch.tensor([[math.nan] * K, [1e6] * K])
    clip = controller.act(make_state(norms=norms)).clip
    assert clip.tolist() == [1.0, 1e3]  # all NaN: keeps the current clip


def test_autoclip_in_a_real_run_uses_the_runs_grad_norms():
    controller = AutoClip(1e-2)
    _, log, _ = rollout(controller)
    history = torch.cat([state.grad_norms for state, _ in log], 1).double()
    expected = torch.quantile(history, 0.1, dim=1).clamp(1e-2, 1e3)
    torch.testing.assert_close(log[-1][1].clip, expected.float())


def test_hypergradient_raises_lr_when_steps_agree_and_lowers_it_otherwise():
    controller = HypergradientAdam(1e-3, hyper_lr=1e-8)
    controller.reset(spec())
    first = controller.act(make_state(dot=0.0))  # no update yet: no change
    torch.testing.assert_close(first.lr, torch.full((2,), 1e-3))
    # run 0: the gradient points against the last update (agree); run 1: along it
    hparams = Hyperparams.full(2, 1e-3, 0.9, 1.0)
    out = controller.act(make_state(dot=[-2e-3, 2e-3], hparams=hparams))
    assert out.lr[0] > 1e-3 > out.lr[1]
    torch.testing.assert_close(out.lr, torch.tensor([1e-3 + 2e-8, 1e-3 - 2e-8]))
    # non-finite signal (diverged run): lr unchanged; huge signals: clamped
    hparams = Hyperparams(out.lr, hparams.beta1, hparams.clip)
    again = controller.act(make_state(dot=[math.nan, 1e9], hparams=hparams))
    assert again.lr[0] == out.lr[0] and again.lr[1] == 1e-6


def test_random_control_is_reproducible_and_seeded():
    state = torch.random.get_rng_state()
    runs = [
        rollout(RandomControl(("lr", "clip"), "compound", seed))[1]
        for seed in (1, 1, 2)
    ]
    assert torch.equal(state, torch.random.get_rng_state())
    same, again, other = (
        torch.stack([torch.stack(h.values()) for _, h in r]) for r in runs
    )
    assert torch.equal(same, again)
    assert not torch.equal(same, other)
    assert (same[:, 1] == 0.9).all()  # beta1 is not controlled


def test_random_control_decodes_residual_actions_around_the_base():
    _, log, _ = rollout(RandomControl(("lr",), "residual", 0))
    initial = Hyperparams.full(2, 1e-3, 0.9, 1.0)
    for state, hparams in log:
        base = base_schedule(initial, state.step, state.total_steps).lr
        ratio = (hparams.lr / base).log10()
        assert (ratio.abs() <= 0.5 + 1e-5).all()
        assert (hparams.clip == 1.0).all()


def test_random_control_refuses_bad_arguments():
    with pytest.raises(ValueError):
        RandomControl(("momentum",), "compound", 0)
    with pytest.raises(ValueError):
        RandomControl(("lr",), "absolute", 0)


def test_replay_control_replays_and_holds_the_last_value():
    controller = ReplayControl({"lr": [1e-3, 2e-3, 3e-3], "clip": [5.0]})
    for _ in range(2):  # reset starts over
        controller.reset(spec())
        out = [controller.act(make_state(step=10 * i)) for i in range(5)]
        torch.testing.assert_close(
            lrs([(None, h) for h in out])[:, 0],
            torch.tensor([1e-3, 2e-3, 3e-3, 3e-3, 3e-3]),
        )
        assert all((h.clip == 5.0).all() and (h.beta1 == 0.9).all() for h in out)


def test_replay_control_refuses_bad_schedules():
    for schedule in ({}, {"lr": []}, {"momentum": [0.9]}):
        with pytest.raises(ValueError):
            ReplayControl(schedule)


def test_median_schedule_handles_uneven_lengths():
    traces = [
        {"lr": [1.0, 2.0, 3.0], "clip": [1.0]},
        {"lr": [3.0, 4.0]},
        {"lr": [2.0], "clip": [3.0, 5.0]},
    ]
    assert median_schedule(traces) == {"lr": [2.0, 3.0, 3.0], "clip": [2.0, 5.0]}
    assert median_schedule([]) == {}


def test_blind_control_sees_only_progress(bundle):
    control = BlindControl(bundle)
    assert control.controlled == bundle.controlled
    assert control.action_mode == bundle.action_mode and control.name == "blind"
    seen = []

    def policy(obs):
        seen.append(obs)
        return bundle.act(obs)

    control.policy = policy
    _, log, _ = rollout(control)
    progress = OBS_NAMES.index("progress")
    hidden = [i for i in range(N_FEATURES) if i != progress]
    assert len(seen) == len(log) == 10
    for obs, (state, _) in zip(seen, log):
        assert obs.dtype == torch.float64
        assert torch.equal(obs[:, hidden], bundle.obs_mean[hidden].expand(2, -1))
        assert torch.equal(obs[:, progress], state.features[:, progress].double())
    # the pilot's normalized input is zero but for progress
    assert (bundle.normalize(seen[-1])[:, hidden].abs() < 1e-6).all()


def test_blind_control_fills_zeros_without_normalization(bundle):
    plain = dataclasses.replace(bundle, obs_mean=None, obs_var=None)
    control = BlindControl(plain)
    control.reset(spec())
    features = torch.rand(2, N_FEATURES, generator=torch.Generator().manual_seed(0))
    seen = []
    control.policy = lambda obs: seen.append(obs) or plain.act(obs)
    state = dataclasses.replace(make_state(), features=features)
    out = control.act(state)
    progress = OBS_NAMES.index("progress")
    expected = torch.zeros(2, N_FEATURES, dtype=torch.float64)
    expected[:, progress] = features[:, progress].double()
    assert torch.equal(seen[0], expected)
    assert out.lr.shape == (2,)


def _record(horizon, steps, lr):
    return {"horizon": horizon, "steps": steps, "lr": lr, "beta1": lr, "clip": lr}


def test_progress_median_schedule_by_hand():
    long = _record(40, [10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0])
    short = _record(20, [10, 20], [10.0, 20.0])
    diverged = _record(40, [10], [7.0])  # ended after its first window
    # bin centres at 12.5%, 37.5%, 62.5%, 87.5% of each run: long sits in windows
    # 0-3, short in 0, 0, 1, 1, diverged only in bin 0
    schedule = progress_median_schedule([long, short, diverged], bins=4)
    assert schedule["lr"] == [7.0, 6.0, 11.5, 12.0]
    assert schedule["clip"] == schedule["lr"]
    alone = progress_median_schedule([diverged], bins=4)
    assert alone["lr"] == [7.0] * 4  # bins no run reached hold the last median
    with pytest.raises(ValueError, match="at least one"):
        progress_median_schedule([_record(40, [0], [1.0])], bins=4)


def test_progress_replay_takes_the_bin_of_each_runs_progress():
    replay = ProgressReplay({"lr": [5.5e-3, 6e-3, 11.5e-3, 12e-3]})
    current = Hyperparams(
        torch.full((3,), 1e-3), torch.full((3,), 0.9), torch.full((3,), math.inf)
    )
    state = make_state(3, total=40, hparams=current)
    state = dataclasses.replace(state, step=torch.tensor([0, 10, 25]))
    replay.reset(spec(3, total=40))
    new = replay.act(state)
    np.testing.assert_allclose(new.lr.numpy(), [5.5e-3, 6e-3, 11.5e-3], rtol=1e-6)
    assert torch.equal(new.beta1, current.beta1)
    assert torch.isinf(new.clip).all()  # an unclipped run stays unclipped
    with pytest.raises(ValueError, match="equally long"):
        ProgressReplay({"lr": [1e-3], "beta1": [0.9, 0.9]})
