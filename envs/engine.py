"""The batched engine: N inner training runs of one shape bucket as one tensor program.

Parameters of the N models are the rows of one flat `[N, P]` buffer, their buffers
(BatchNorm statistics, `SeededDropout` state) are stacked `[N, ...]`; one
`vmap(grad_and_value(...))` call gives every run's loss and gradients, in train
mode, and validation and test losses run in eval mode. Each run has its own
minibatch order, hyperparameters `[N]`, gradient clipping and Adam state, and ends
alone when it diverges. The engine also builds the observation and the
reward, so training, evaluation and deployment share one definition of both.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad_and_value, vmap

from hyperpilot.envs.actions import Hyperparams, decode_in_run
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.features import N_FEATURES, FeatureTracker
from hyperpilot.envs.optim import BatchedAdam, clip_by_global_norm, row_dot
from hyperpilot.envs.order import MinibatchOrder
from hyperpilot.envs.reward import compute_reward
from hyperpilot.envs.settings import EnvSettings, resolve_device
from hyperpilot.envs.tasks.base import TaskInstance


def is_divergence(
    loss: torch.Tensor, first_loss: torch.Tensor, factor: float
) -> torch.Tensor:
    """`[N]` whether each loss marks a divergence: the one rule for every inner run.

    A loss diverges when it is not finite, or exceeds `factor` times the run's first
    loss. Before a first loss is known, and where it is 0 (a run that starts at 0
    gives no scale), only a non-finite loss does. The engine, the library-optimizer
    runs and the deployed `Pilot` all decide with this function.
    """
    limit = divergence_limit(first_loss, factor)
    return ~torch.isfinite(loss) | (loss.to(torch.float64) > limit)


def divergence_limit(first_loss: torch.Tensor, factor: float) -> torch.Tensor:
    """`[N]` the loss above which each run diverges (inf before a first loss > 0)."""
    return torch.where(first_loss > 0, factor * first_loss, math.inf)


@dataclass
class _WindowGraph:
    """A captured decision window: the graph, its input and output tensors."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Transition:
    """What one decision window produced, per run (all `[N]` unless noted).

    `obs` is `[N, F]`; `grad_norms` is `[N, K]` (pre-clip, one per inner step);
    `grad_update_dot` sums, over the window, the dot product of each step's gradient
    with the previous step's parameter update (the hypergradient signal).
    """

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    train_loss: torch.Tensor
    val_loss: torch.Tensor
    grad_norm: torch.Tensor
    grad_norms: torch.Tensor
    grad_update_dot: torch.Tensor
    hparams: Hyperparams


class BatchedEngine:
    """N inner runs of one shape bucket, in lockstep, on one device.

    Use `start` to load episodes into runs, then `act` (an agent's actions) or
    `advance` (hyperparameters chosen by any controller) once per decision.
    """

    def __init__(self, n: int, settings: EnvSettings | None = None) -> None:
        if n < 1:
            raise ValueError(f"an engine needs n >= 1 runs, got {n}")
        self.n = n
        self.settings = settings or EnvSettings()
        self.device = resolve_device(self.settings.device)
        self.settings.check_capture(self.device)
        self.dtype = self.settings.torch_dtype
        self.k = self.settings.decision_interval
        self._built = False
        self.families = [""] * n
        self.instances: list[TaskInstance | None] = [None] * n

    # ------------------------------------------------------------------ set-up
    def _build(self, instance: TaskInstance) -> None:
        """Allocates stacked tensors shaped like `instance` for all N runs."""
        n, kw = self.n, {"device": self.device, "dtype": self.dtype}
        # One flat [N, P] buffer holds every run's parameters; `params` are views of
        # it shaped like the model's, for functional_call.
        shapes = {k: p.shape for k, p in instance.model.named_parameters()}
        sizes = [math.prod(shape) for shape in shapes.values()]
        self.flat_params = torch.zeros(n, sum(sizes), **kw)
        self.params = {
            name: chunk.view(n, *shape)
            for (name, shape), chunk in zip(
                shapes.items(), self.flat_params.split(sizes, dim=1)
            )
        }
        self.loss_fn = instance.loss
        self.accuracy_fn = instance.accuracy

        def stack(t: torch.Tensor) -> torch.Tensor:
            target = t.to(self.device, self.dtype if t.is_floating_point() else t.dtype)
            return target.unsqueeze(0).repeat(n, *([1] * t.dim())).contiguous()

        self.buffers = {
            name: stack(buffer.detach())
            for name, buffer in instance.model.named_buffers()
        }

        self.data = {
            name: stack(getattr(instance, name))
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        self.batch_size = instance.batch_size
        self.order = MinibatchOrder(
            n, len(instance.x_train), self.batch_size, self.device
        )
        self.adam = BatchedAdam(
            self.flat_params, self.settings.beta2, self.settings.eps
        )
        self.weight_decay = torch.zeros(n, **kw)
        self._decays = False  # whether any run has weight decay
        self.tracker = FeatureTracker(n, self.device)
        self.last_obs = torch.zeros(n, N_FEATURES, device=self.device)
        self.hparams = Hyperparams.full(n, 1e-3, 0.9, 1.0, **kw)
        self.initial = self.hparams
        zeros = {"device": self.device, "dtype": torch.long}
        self.step_count = torch.zeros(n, **zeros)
        self.horizon = torch.ones(n, **zeros)
        self.running = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.first_val = torch.ones(n, device=self.device, dtype=torch.float64)
        self.last_val = torch.ones(n, device=self.device, dtype=torch.float64)
        self.best_val = torch.ones(n, device=self.device, dtype=torch.float64)
        # Two (gradient, update) pairs used in turn: this step's, and the previous
        # step's clipped gradient and parameter update, whose dot products with
        # this step's gradient come in one call.
        self._pairs = torch.zeros(2, 2, *self.flat_params.shape, **kw)
        self._pair_views = [(pair, *pair.unbind(0)) for pair in self._pairs.unbind(0)]
        self._parity = 0
        self.prev_grad_norm = torch.zeros(n, **kw)
        n_rows = len(instance.x_train)
        self._row_offsets = (torch.arange(n, device=self.device) * n_rows)[:, None]
        self._steps_ahead = torch.arange(self.k, device=self.device)[:, None]
        self._negative_zero = torch.full((1,), -0.0, **kw)
        self._train_x = self.data["x_train"].flatten(0, 1)
        self._train_y = self.data["y_train"].flatten(0, 1)
        self._graphs: dict[tuple[int, bool], _WindowGraph] = {}

        # Two stateless copies of the model, one per mode: the inner steps run in
        # train mode, validation and test in eval mode.
        train_model = copy.deepcopy(instance.model).to("meta").train()
        eval_model = copy.deepcopy(train_model).eval()

        def train_loss_of(params, buffers, x, y):
            # Train mode updates buffers in place (BatchNorm's running statistics,
            # SeededDropout's counter): copies take the updates and come back as
            # aux output, so that only the active runs keep theirs.
            buffers = {name: buffer.clone() for name, buffer in buffers.items()}
            output = functional_call(train_model, (params, buffers), (x,))
            return self.loss_fn(output, y), buffers

        def outputs_of(params, buffers, x):
            return functional_call(eval_model, (params, buffers), (x,))

        def loss_of(params, buffers, x, y):
            return self.loss_fn(outputs_of(params, buffers, x), y)

        self._grad_fn = vmap(grad_and_value(train_loss_of, has_aux=True))
        if self.settings.compile:
            self._grad_fn = torch.compile(self._grad_fn, dynamic=False)
        self._loss_fn = vmap(loss_of)
        self._outputs_fn = vmap(outputs_of)
        self._built = True

    def start(self, runs: Sequence[int], episodes: Sequence[Episode]) -> torch.Tensor:
        """Loads `episodes` into `runs` and returns their first observations `[len, F]`.

        The first call must load all N runs. Every instance must share the bucket's
        shapes (same family and shape knobs).
        """
        if len(runs) != len(episodes):
            raise ValueError("start() needs one episode per run")
        if not self._built:
            if sorted(runs) != list(range(self.n)):
                raise ValueError(f"the first start() must load all {self.n} runs")
            self._build(episodes[0].instance)
        mask = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        lr, beta1, clip = (
            self.hparams.lr.clone(),
            self.hparams.beta1.clone(),
            self.hparams.clip.clone(),
        )
        val_available = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        with torch.no_grad():
            for run, episode in zip(runs, episodes):
                self._load_instance(run, episode.instance)
                mask[run] = True
                lr[run], beta1[run], clip[run] = episode.lr, episode.beta1, episode.clip
                val_available[run] = episode.val_available
            self.hparams = Hyperparams(lr, beta1, clip)
            self._decays = any(i.weight_decay for i in self.instances if i is not None)
            self.initial = self.hparams.where(mask, self.initial)
            self.adam.reset_runs(mask)
            self._pairs[self._parity, :, mask] = 0.0
            self.prev_grad_norm[mask] = 0.0
            self.step_count[mask] = 0
            self.running |= mask
            val = self.evaluate("val").to(torch.float64)
            self.first_val = torch.where(mask, val, self.first_val)
            self.last_val = torch.where(mask, val, self.last_val)
            self.best_val = torch.where(mask, val, self.best_val)
            self.tracker.reset(mask, self.first_val, val_available)
            obs = self.tracker.observe(*self.hparams.values(), self.progress(), val)
            self.last_obs = torch.where(mask[:, None], obs, self.last_obs)
        return obs[mask]

    def _load_instance(self, run: int, instance: TaskInstance) -> None:
        model = instance.model
        for kind, sources, targets in (
            ("parameter", dict(model.named_parameters()), self.params),
            ("buffer", dict(model.named_buffers()), self.buffers),
        ):
            for name in dict.fromkeys([*sources, *targets]):
                source, target = sources.get(name), targets.get(name)
                if (
                    source is None
                    or target is None
                    or target[run].shape != source.shape
                ):
                    raise ValueError(
                        f"instance of {instance.family!r} does not fit this engine's "
                        f"shapes ({kind} {name!r}); runs in one engine need equal "
                        "shape knobs"
                    )
                target[run] = source.detach().to(self.device, target.dtype)
        for name, value in self.data.items():
            source = getattr(instance, name)
            if value[run].shape != source.shape:
                raise ValueError(
                    f"instance {name} shape {tuple(source.shape)} does not "
                    f"fit this engine ({tuple(value[run].shape)})"
                )
            value[run] = source.to(self.device, value.dtype)
        if instance.batch_size != self.batch_size:
            raise ValueError("runs in one engine need the same batch_size")
        self.order.restart(run, instance.data_seed)
        self.weight_decay[run] = instance.weight_decay
        self.horizon[run] = instance.horizon
        self.families[run] = instance.family
        self.instances[run] = instance

    # ---------------------------------------------------------------- stepping
    def _train_rows(self, data: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Gathers minibatch rows of `[N, n_rows, ...]` data by flat row index.

        An `index_select` is about 4x faster than two-tensor advanced indexing.
        """
        flat = data.view(-1, *data.shape[2:])
        return flat.index_select(0, rows).view(self.n, -1, *data.shape[2:])

    def progress(self) -> torch.Tensor:
        """`[N]` inner steps done / horizon, in [0, 1]."""
        return (self.step_count.to(torch.float64) / self.horizon).clamp(0.0, 1.0)

    def decisions_left(self) -> torch.Tensor:
        """`[N]` decisions each run has left."""
        left = (self.horizon - self.step_count).clamp(min=0)
        return torch.div(left + self.k - 1, self.k, rounding_mode="floor")

    def decode(self, action: torch.Tensor) -> Hyperparams:
        """The hyperparameters that `action` `[N, k]` asks for (see `decode_action`)."""
        action = torch.as_tensor(action, device=self.device, dtype=self.dtype)
        return decode_in_run(
            action,
            self.hparams,
            self.initial,
            self.step_count,
            self.horizon,
            self.settings.controlled,
            self.settings.action_mode,
            self.settings.action_bounds,
        )

    def act(self, action: torch.Tensor) -> Transition:
        """Decodes an agent's actions `[N, k]`, then runs one decision window."""
        return self.advance(self.decode(action))

    @property
    def prev_grad(self) -> torch.Tensor:
        """`[N, P]` the previous inner step's clipped gradients."""
        return self._pairs[self._parity, 0]

    @property
    def prev_update(self) -> torch.Tensor:
        """`[N, P]` the previous inner step's parameter changes."""
        return self._pairs[self._parity, 1]

    def advance(self, hparams: Hyperparams) -> Transition:
        """Sets `hparams` for the runs still running and trains K inner steps."""
        running = self.running
        self.hparams = hparams.to(self.device, self.dtype).where(running, self.hparams)
        lr, beta1, clip = self.hparams.values()
        rows = (self.order.window(self.k) + self._row_offsets).flatten(1)
        if self.settings.capture:
            ok, grad_norms, update_dot = self._replay_window(
                rows, lr, beta1, clip, running
            )
        else:
            ok, grad_norms, update_dot = self._train_window(
                rows, lr, beta1, clip, running
            )
        with torch.no_grad():
            finite = self.flat_params.isfinite().all(1)
            diverged = running & ~(ok & finite)
            train_loss = self.tracker.window_train_loss()
            val = self.evaluate("val").to(torch.float64)
            truncated = running & ~diverged & (self.step_count >= self.horizon)
            reward = compute_reward(
                self.settings.reward,
                val_loss=val,
                previous_val_loss=self.last_val,
                first_val_loss=self.first_val,
                train_loss=train_loss,
                first_train_loss=self.tracker.first_loss,
                last_decision=truncated.to(torch.float64),
                diverged=diverged,
                decisions_left=self.decisions_left(),
            )
            reward = torch.where(running, reward, torch.zeros_like(reward))
            self.last_val = val
            better = running & ~diverged & (val < self.best_val)
            self.best_val = torch.where(better, val, self.best_val)
            obs = self.tracker.observe(lr, beta1, clip, self.progress(), val)
            self.last_obs = obs
            grad_norm = grad_norms.clamp_min(1e-30).log().mean(1).exp()
            self.running = running & ~diverged & ~truncated
        return Transition(
            obs=obs,
            reward=reward.to(torch.float32),
            terminated=diverged,
            truncated=truncated,
            train_loss=train_loss,
            val_loss=val,
            grad_norm=grad_norm,
            grad_norms=grad_norms,
            grad_update_dot=update_dot,
            hparams=self.hparams,
        )

    def _train_window(
        self,
        rows: torch.Tensor,
        lr: torch.Tensor,
        beta1: torch.Tensor,
        clip: torch.Tensor,
        running: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K inner steps of every run, with their bookkeeping.

        Per step: the minibatch, the gradient, the divergence test, the clipping
        and the masked Adam step, each a whole-batch operation. What only the
        features need (sums, the gradients' agreement, first losses) is recorded
        once per window from `[K, N]` stacks. Every state tensor changes in place,
        so a CUDA graph of this method replays it (`settings.capture`).

        Args:
            rows: `[K, N * batch_size]` flat row indices of the minibatches.
            lr: `[N]` learning rates.
            beta1: `[N]` Adam beta1.
            clip: `[N]` clipping thresholds.
            running: `[N]` the runs that train.

        Returns:
            `[N]` whether a run's losses all passed the divergence test, the
            `[N, K]` pre-clip gradient norms and the `[N]` sums of each step's
            gradient dotted with the previous parameter update.
        """
        n, factor = self.n, self.settings.divergence_factor
        shape_x, shape_y = self._train_x.shape[1:], self._train_y.shape[1:]
        # A run trains at step i while it runs, has not diverged and has steps left.
        alive = (running & (self.step_count + self._steps_ahead < self.horizon)).unbind(
            0
        )
        negated_steps, corrections = self.adam.window_coefficients(lr, beta1, self.k)
        weight = (1.0 - beta1)[:, None]
        decay = (lr * self.weight_decay)[:, None] if self._decays else None
        first = self.tracker.first_loss
        limit = divergence_limit(first, factor)
        ok = torch.ones_like(running)
        losses, norms, factors, actives, dots = [], [], [], [], []
        for i, index in enumerate(rows.unbind(0)):
            x = self._train_x.index_select(0, index).view(n, -1, *shape_x)
            y = self._train_y.index_select(0, index).view(n, -1, *shape_y)
            grads, (loss, buffers) = self._grad_fn(self.params, self.buffers, x, y)
            previous = self._pair_views[self._parity][0]
            self._parity ^= 1
            _, grad_out, update_out = self._pair_views[self._parity]
            grad = torch.cat(
                [g.reshape(n, -1) for g in grads.values()], dim=1, out=grad_out
            )
            if i == 1:  # the first loss of a fresh run is its step-0 loss
                first = torch.where(torch.isnan(first), losses[0].double(), first)
                limit = divergence_limit(first, factor)
            ok = ok & torch.isfinite(loss) & (loss.to(torch.float64) <= limit)
            active = ok & alive[i]
            for name, buffer in buffers.items():
                keep = active.view(-1, *([1] * (buffer.dim() - 1)))
                self.buffers[name].copy_(torch.where(keep, buffer, self.buffers[name]))
            dots.append(row_dot(grad, previous))  # with the previous grad, update
            grad, norm, clip_factor = clip_by_global_norm(grad, clip)
            keep = active[:, None]
            self.adam.apply(
                self.flat_params,
                grad,
                torch.where(keep, negated_steps[i], self._negative_zero),
                corrections[i],
                weight,
                active,
                None if decay is None else torch.where(keep, decay, 0.0),
                update_out,
            )
            losses.append(loss)
            norms.append(norm)
            factors.append(clip_factor)
            actives.append(active)
        norms, factors = torch.stack(norms), torch.stack(factors)
        actives, dots = torch.stack(actives), torch.stack(dots)
        clipped_norms = norms * factors
        # A cosine ignores the clipping factor: the clipped gradient served as the
        # previous one, its norm is the clipped norm.
        previous_norms = torch.cat([self.prev_grad_norm[None], clipped_norms[:-1]])
        agreements = dots[:, 0] / (norms * previous_norms).clamp_min(1e-30)
        self.prev_grad_norm.copy_(clipped_norms[-1])
        self.tracker.record_window(
            torch.stack(losses), norms, (factors < 1.0) & actives, agreements
        )
        steps_taken = actives.sum(0)
        self.step_count += steps_taken
        self.adam.steps += steps_taken.to(self.adam.steps.dtype)
        start = torch.zeros_like(first)[None]
        update_dot = torch.cat([start, dots[:, 1].to(torch.float64)]).cumsum(0)[-1]
        return ok, norms.T.contiguous(), update_dot

    def _replay_window(
        self,
        rows: torch.Tensor,
        lr: torch.Tensor,
        beta1: torch.Tensor,
        clip: torch.Tensor,
        running: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_train_window` through a CUDA graph, captured at its first use.

        The first window of each kind (which gradient pair it starts from, with or
        without weight decay) runs eagerly and is then captured; later windows copy
        their inputs into the graph's and replay it. Dropout stays per run under
        capture: `SeededDropout` draws from its buffers, which change in place.
        """
        inputs = (rows, lr, beta1, clip, running)
        key = (self._parity, self._decays)
        graph = self._graphs.get(key)
        if graph is None:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # the warm-up is this window's real work
                outputs = self._train_window(*inputs)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            static = tuple(t.clone() for t in inputs)
            graph = _WindowGraph(torch.cuda.CUDAGraph(), static, ())
            parity = self._parity
            self._parity = key[0]
            with torch.cuda.graph(graph.graph):
                graph.outputs = self._train_window(*static)
            self._parity = parity
            self._graphs[key] = graph
            return outputs
        for static, value in zip(graph.inputs, inputs):
            static.copy_(value)
        graph.graph.replay()
        self._parity ^= self.k & 1
        return tuple(t.clone() for t in graph.outputs)

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "val") -> torch.Tensor:
        """`[N]` mean loss of every run on its `val` or `test` data, in eval mode."""
        return self._loss_fn(
            self.params,
            self.buffers,
            self.data[f"x_{split}"],
            self.data[f"y_{split}"],
        )

    @torch.no_grad()
    def accuracy(self, split: str = "test") -> torch.Tensor | None:
        """`[N]` accuracy on `split` (eval mode) for classification families, else None."""
        if self.accuracy_fn is None:
            return None
        outputs = self._outputs_fn(self.params, self.buffers, self.data[f"x_{split}"])
        return vmap(self.accuracy_fn)(outputs, self.data[f"y_{split}"])

    def run_infos(self, transition: Transition) -> list[dict[str, object]]:
        """The `info` dict of every run after a decision.

        The same keys at every step, plus `final_val_loss`, `initial_val_loss`,
        `best_val_loss` and `diverged` when the run ended. The values leave the
        device in one copy: a read per run and key would wait on a GPU N x 7 times.
        """
        columns = torch.stack(
            [
                v.to(torch.float64)
                for v in (
                    transition.train_loss,
                    transition.val_loss,
                    transition.grad_norm,
                    *transition.hparams.values(),
                    self.first_val,
                    self.best_val,
                )
            ]
        )
        flags = torch.stack(
            [transition.terminated | transition.truncated, transition.terminated]
        )
        values, (ended, diverged) = columns.cpu().numpy(), flags.cpu().numpy()
        infos: list[dict[str, object]] = []
        for run in range(self.n):
            train, val, grad, lr, beta1, clip, first, best = values[:, run].tolist()
            info: dict[str, object] = {
                "train_loss": train,
                "val_loss": val,
                "grad_norm": grad,
                "lr": lr,
                "beta1": beta1,
                "clip": clip,
                "task": self.families[run],
            }
            if ended[run]:
                info["final_val_loss"] = val
                info["initial_val_loss"] = first
                info["best_val_loss"] = best
                info["diverged"] = bool(diverged[run])
            infos.append(info)
        return infos
