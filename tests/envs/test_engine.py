import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from hyperpilot.envs.actions import Hyperparams
from hyperpilot.envs.engine import BatchedEngine, MinibatchOrder, is_divergence
from hyperpilot.envs.episodes import Episode, InitRanges, draw_episode
from hyperpilot.envs.features import (
    N_FEATURES,
    OBS_HIGH,
    OBS_LOW,
    OBS_NAMES,
    FeatureTracker,
)
from hyperpilot.envs.reward import RewardConfig, compute_reward
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks import TaskInstance, make_family
from hyperpilot.envs.tasks.base import mse

CPU = EnvSettings(device="cpu")


def episodes(family, n, seed=0, **kwargs):
    fam = make_family(family, **kwargs)
    rng = np.random.default_rng(seed)
    return [Episode(fam.sample(rng), 1e-3, 0.9, 1.0, True) for _ in range(n)]


def run_to_end(engine, lrs):
    transitions = []
    while engine.running.any():
        hparams = Hyperparams(
            torch.tensor(lrs), engine.hparams.beta1, engine.hparams.clip
        )
        transitions.append(engine.advance(hparams))
    return transitions


def test_a_diverging_run_ends_alone_and_the_others_are_unaffected():
    eps = episodes("mlp_teacher", 4, horizon=100)
    mixed = BatchedEngine(4, CPU)
    mixed.start(range(4), eps)
    transitions = run_to_end(mixed, [1.0, 1e-3, 1.0, 3e-3])
    diverged = torch.stack([t.terminated for t in transitions]).any(0)
    assert diverged.tolist() == [True, False, True, False]
    # diverged runs ended early with a penalty, the others ran the whole horizon
    assert len(transitions) == 10
    assert (mixed.step_count[[1, 3]] == 100).all()
    assert (mixed.step_count[[0, 2]] < 100).all()
    # the healthy runs match the same runs trained without the diverging ones
    alone = BatchedEngine(2, CPU)
    alone.start(range(2), [eps[1], eps[3]])
    run_to_end(alone, [1e-3, 3e-3])
    for name, value in alone.params.items():
        torch.testing.assert_close(mixed.params[name][[1, 3]], value)
    first_penalty = next(t.reward for t in transitions if t.terminated.any())
    assert (first_penalty[[0, 2]] < -1.0).all()


def test_observations_stay_in_their_box_and_rewards_are_finite():
    eps = [
        draw_episode(
            make_family("quadratic_2d"), np.random.default_rng(s), InitRanges()
        )
        for s in range(6)
    ]
    engine = BatchedEngine(6, CPU)
    obs = engine.start(range(6), eps)
    low, high = torch.tensor(OBS_LOW), torch.tensor(OBS_HIGH)
    generator = torch.Generator().manual_seed(0)
    while engine.running.any():
        assert obs.shape[1] == N_FEATURES
        assert ((obs >= low) & (obs <= high)).all()
        t = engine.act(torch.rand(6, 3, generator=generator) * 2 - 1)
        obs = t.obs
        assert torch.isfinite(t.reward).all()


def test_engine_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    engine = BatchedEngine(2, CPU)
    engine.start(range(2), episodes("mlp_digits", 2, horizon=20))
    run_to_end(engine, [1e-3, 1e-2])
    assert torch.equal(state, torch.random.get_rng_state())


def test_raw_signals_for_controllers():
    engine = BatchedEngine(2, CPU)
    engine.start(range(2), episodes("quadratic_2d", 2))
    t = engine.act(torch.zeros(2, 3))
    assert t.grad_norms.shape == (2, CPU.decision_interval)
    assert (t.grad_norms > 0).all()
    assert torch.isfinite(t.grad_update_dot).all()
    assert torch.isfinite(t.val_loss).all() and torch.isfinite(t.train_loss).all()
    assert engine.step_count.tolist() == [10, 10]


def test_instances_of_other_shapes_are_refused():
    engine = BatchedEngine(1, CPU)
    engine.start([0], episodes("mlp_digits", 1))
    with pytest.raises(ValueError, match="shape"):
        engine.start([0], episodes("mlp_digits", 1, width=32))


def test_accuracy_for_classification():
    engine = BatchedEngine(2, CPU)
    engine.start(range(2), episodes("mlp_digits", 2))
    accuracy = engine.accuracy("test")
    assert accuracy.shape == (2,) and ((accuracy >= 0) & (accuracy <= 1)).all()


@pytest.mark.slow
def test_compiled_engine_matches_eager():
    results = []
    for compile_ in (False, True):
        engine = BatchedEngine(2, EnvSettings(device="cpu", compile=compile_))
        engine.start(range(2), episodes("quadratic_2d", 2))
        results.append(engine.act(torch.zeros(2, 3)))
    eager, compiled = results
    torch.testing.assert_close(compiled.obs, eager.obs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.reward, eager.reward, rtol=1e-5, atol=1e-6)


def test_minibatch_order_walks_each_runs_seeded_permutations():
    # 10 rows in batches of 4: two batches per permutation, the last 2 rows dropped.
    order = MinibatchOrder(2, n_rows=10, batch_size=4, device="cpu")
    order.restart(0, seed=1)
    order.restart(1, seed=2)
    batches = [order.next() for _ in range(4)]
    for run, seed in ((0, 1), (1, 2)):
        generator = torch.Generator().manual_seed(seed)
        expected = [torch.randperm(10, generator=generator) for _ in range(2)]
        expected = [p[i : i + 4] for p in expected for i in (0, 4)]
        for batch, rows in zip(batches, expected, strict=True):
            assert torch.equal(batch[run], rows)
    order.restart(1, seed=2)  # a restarted run begins its sequence again
    assert torch.equal(order.next()[1], batches[0][1])


NORM = "helpers:NormFamily"


def test_buffers_stand_still_once_a_run_has_ended():
    # horizon 15, K = 10: the second window trains its first 5 steps only
    engine = BatchedEngine(2, CPU)
    engine.start(range(2), episodes(NORM, 2, horizon=15))
    engine.advance(engine.hparams)
    engine.advance(engine.hparams)
    assert engine.step_count.tolist() == [15, 15]
    assert engine.buffers["1.num_batches_tracked"].tolist() == [15, 15]


def test_an_instance_without_the_buckets_buffers_is_refused():
    engine = BatchedEngine(1, CPU)
    (episode,) = episodes(NORM, 1)
    engine.start([0], [episode])
    model = copy.deepcopy(episode.instance.model)
    model[1] = nn.BatchNorm1d(8, track_running_stats=False)  # same parameters
    instance = dataclasses.replace(episode.instance, model=model)
    with pytest.raises(ValueError, match=r"buffer '1\.running_mean'"):
        engine.start([0], [dataclasses.replace(episode, instance=instance)])


def test_a_runs_dropout_masks_do_not_depend_on_its_bucket():
    settings = EnvSettings(device="cpu", dtype="float64")
    eps = episodes(NORM, 4, dropout=0.5, horizon=30)
    alone = BatchedEngine(1, settings)
    alone.start([0], [eps[2]])
    bucket = BatchedEngine(4, settings)
    bucket.start(range(4), eps)
    for engine in (alone, bucket):
        while engine.running.any():
            engine.advance(engine.hparams)
    assert bucket.buffers["3.counter"].tolist() == [30] * 4
    for name, value in alone.params.items():
        torch.testing.assert_close(bucket.params[name][2], value[0], rtol=1e-12, atol=0)
    # The comparison has teeth: another dropout seed gives another run.
    other = dataclasses.replace(
        eps[2].instance, model=copy.deepcopy(eps[2].instance.model)
    )
    other.model[3].seed += 1
    reseeded = BatchedEngine(1, settings)
    reseeded.start([0], [dataclasses.replace(eps[2], instance=other)])
    while reseeded.running.any():
        reseeded.advance(reseeded.hparams)
    assert not torch.allclose(reseeded.flat_params, alone.flat_params, rtol=1e-3)


def test_evaluation_is_deterministic_and_draws_no_dropout_mask():
    engine = BatchedEngine(2, CPU)
    engine.start(range(2), episodes(NORM, 2, dropout=0.5))
    engine.advance(engine.hparams)
    counters = engine.buffers["3.counter"].clone()
    assert torch.equal(engine.evaluate("val"), engine.evaluate("val"))
    assert torch.equal(engine.buffers["3.counter"], counters)


def test_a_run_without_weight_decay_steps_bit_for_bit_as_adam():
    """In a bucket where another run decays, a run without decay is plain Adam."""
    first, second = episodes(NORM, 2, weight_decay=0.5)
    plain = dataclasses.replace(first.instance, weight_decay=0.0)
    first = dataclasses.replace(first, instance=plain)
    no_decay = dataclasses.replace(second.instance, weight_decay=0.0)
    results = []
    for other in (second, dataclasses.replace(second, instance=no_decay)):
        engine = BatchedEngine(2, CPU)
        engine.start(range(2), [first, other])
        while engine.running.any():
            engine.advance(engine.hparams)
        results.append(engine.flat_params)
    decaying, adam = results
    assert torch.equal(decaying[0], adam[0])
    assert not torch.allclose(decaying[1], adam[1], rtol=1e-3)


# --- losses of 0 (the loss contract: >= 0) -----------------------------------


def _zero_start_instance():
    """Linear regression whose model fits the first minibatch exactly (loss 0)."""
    n_rows, batch_size, seed = 32, 8, 3
    order = MinibatchOrder(1, n_rows, batch_size, "cpu")
    order.restart(0, seed)
    x = torch.linspace(1.0, 2.0, n_rows)[:, None]
    y = torch.ones(n_rows, 1)
    y[order.next()[0]] = 0.0  # the zero-weight model is exact on the first batch
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    return TaskInstance(
        family="zero_start",
        model=model,
        x_train=x,
        y_train=y,
        x_val=x[:8],
        y_val=torch.zeros(8, 1),  # the first validation loss is 0 too
        x_test=x[:8],
        y_test=y[:8],
        loss=mse,
        batch_size=batch_size,
        horizon=40,
        data_seed=seed,
    )


def test_a_run_that_starts_at_loss_0_trains_with_finite_features_and_rewards():
    for kind in ("val_loss", "log_improvement"):
        settings = EnvSettings(device="cpu", reward=RewardConfig(kind=kind))
        engine = BatchedEngine(1, settings)
        instance = _zero_start_instance()
        engine.start([0], [Episode(instance, 1e-2, 0.9, 1.0, True)])
        transitions = run_to_end(engine, [1e-2])
        assert float(engine.tracker.first_loss[0]) == 0.0
        assert not any(bool(t.terminated[0]) for t in transitions)  # no ratio rule
        assert engine.step_count.tolist() == [40]
        assert engine.params["weight"].abs().item() > 0.1  # it trained
        low, high = torch.tensor(OBS_LOW), torch.tensor(OBS_HIGH)
        for t in transitions:
            assert torch.isfinite(t.obs).all() and torch.isfinite(t.reward).all()
            assert ((t.obs >= low) & (t.obs <= high)).all()
        # the slow loss average recovers from the zero start instead of sticking at
        # -inf (which kept the long trend at its +5 bound for the whole run)
        long_trend = OBS_NAMES.index("loss_trend_long")
        assert abs(float(transitions[-1].obs[0, long_trend])) < 5


def test_losses_of_0_give_finite_features_rewards_and_no_ratio_limit():
    tracker = FeatureTracker(3)
    runs = torch.ones(3, dtype=torch.bool)
    tracker.reset(runs, torch.tensor([0.0, 1.0, 2.0]), runs)
    for loss in ([0.0, 1.0, -0.5], [0.5, 0.0, -1.0]):  # -1: against the contract
        tracker.record_step(
            torch.tensor(loss), torch.ones(3), torch.zeros(3), torch.zeros(3)
        )
        huge = torch.full((3,), 1e30, dtype=torch.float64)
        # a first loss of 0 (or below) gives no scale: only non-finite losses end it
        assert is_divergence(huge, tracker.first_loss, 100.0).tolist() == [
            False,
            True,
            False,
        ]
        obs = tracker.observe(
            *[torch.full((3,), v) for v in (1e-3, 0.9, 1.0, 0.5)],
            torch.tensor([0.0, 0.0, -2.0]),
        )
        assert torch.isfinite(obs).all()
    kw = {
        "train_loss": torch.zeros(2),
        "first_train_loss": torch.zeros(2),
        "last_decision": torch.zeros(2),
        "diverged": torch.zeros(2, dtype=torch.bool),
        "decisions_left": torch.ones(2),
    }
    zero = torch.zeros(2, dtype=torch.float64)
    val = RewardConfig(kind="val_loss")
    # a run that stays at 0 neither improves nor worsens: ratio 1, improvement 0
    reward = compute_reward(
        val, val_loss=zero, previous_val_loss=zero, first_val_loss=zero, **kw
    )
    assert reward.tolist() == [-1.0, -1.0]
    improvement = compute_reward(
        RewardConfig(kind="log_improvement"),
        val_loss=zero,
        previous_val_loss=zero,
        first_val_loss=zero,
        **kw,
    )
    assert improvement.tolist() == [0.0, 0.0]
    train = compute_reward(
        RewardConfig(kind="train_loss"),
        val_loss=zero,
        previous_val_loss=zero,
        first_val_loss=zero,
        **kw,
    )
    assert train.tolist() == [-1.0, -1.0]
