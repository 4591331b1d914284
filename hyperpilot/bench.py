"""Benchmarks: `hyperpilot bench throughput` measures the engine against its alternatives."""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper
from torch.profiler import ProfilerActivity, profile

from hyperpilot import ray_backend
from hyperpilot.envs import BatchedTrainingVecEnv, InnerTrainingEnv
from hyperpilot.envs.ray_vec_env import RayVecEnv
from hyperpilot.envs.tasks import make_family

BENCHMARKS_MD = Path("docs/BENCHMARKS.md")
# The inner problem of the throughput table: an MLP 64-128-10 on digits, batch 128.
FAMILY = "mlp_digits"
FAMILY_KWARGS = {"width": 128, "depth": 1, "batch_size": 128, "horizon": 10_000}


def _timed(arms: dict[str, Callable[[], None]], min_seconds: float) -> dict[str, float]:
    """Median seconds per call of each arm, measured in interleaved rounds.

    Arms take turns (one call each per round, after one warm-up call), so a drift of
    the machine's speed during the measurement hits every arm alike; rounds go on
    until every arm has run at least `min_seconds` and three calls.
    """
    for fn in arms.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    while any(len(t) < 3 or sum(t) < min_seconds for t in times.values()):
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def raw_batched_loop(n: int, k: int, device: str = "cpu") -> Callable[[], None]:
    """A hand-written stacked MLP + torch.optim.Adam: K steps and a validation pass.

    This is the floor the env is compared against: the same math with no features,
    no per-run hyperparameters and no env plumbing.
    """
    instance = make_family(FAMILY, **FAMILY_KWARGS).sample(np.random.default_rng(0))
    x, y = instance.x_train.to(device), instance.y_train.to(device)
    x_val = instance.x_val.to(device)
    generator = torch.Generator().manual_seed(0)
    d, h, c = x.shape[1], FAMILY_KWARGS["width"], 10
    w1 = (torch.randn(n, d, h, generator=generator) / d**0.5).to(device)
    w2 = (torch.randn(n, h, c, generator=generator) / h**0.5).to(device)
    w1.requires_grad_()
    w2.requires_grad_()
    b1 = torch.zeros(n, 1, h, device=device, requires_grad=True)
    b2 = torch.zeros(n, 1, c, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([w1, b1, w2, b2], lr=1e-3)
    batch = FAMILY_KWARGS["batch_size"]

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return torch.bmm(torch.relu(torch.bmm(inputs, w1) + b1), w2) + b2

    def window() -> None:
        for _ in range(k):
            index = torch.randint(len(x), (n, batch), generator=generator).to(device)
            logits = forward(x[index])
            loss = (
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, c), y[index].reshape(-1), reduction="sum"
                )
                / batch
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            # reading a number back waits for the device, as the env's observations do
            forward(x_val.expand(n, -1, -1)).sum().item()

    return window


def _env_step(venv, n: int, k_dim: int) -> Callable[[], None]:
    venv.seed(0)
    venv.reset()
    actions = np.zeros((n, k_dim), np.float32)
    return lambda: venv.step(actions)


def _outer_operator_calls(fn: Callable[[], None], calls: int) -> int:
    """Outermost aten operator calls of `calls` calls of `fn` (after one warm-up).

    An operator called by another operator (`linear` calling `mm`) counts once, as
    the outer one: on a GPU each outer call is at least one kernel launch.
    """
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    count = 0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        count += parent is None
    return count


def operator_calls(
    n: int = 64,
    *,
    windows: int = 8,
    device: str = "cpu",
    out: Path | None = BENCHMARKS_MD,
    command: str = "hyperpilot bench throughput --ops",
    log: Callable[[str], None] = print,
) -> tuple[float, float]:
    """Operator calls per inner step of `BatchedTrainingVecEnv` and of the raw loop.

    Counts the outermost aten calls (`torch.profiler`) of `windows` decision
    windows (K=10, eager: no compile, no capture) of the throughput problem, so the
    minibatch permutations drawn every few windows are averaged in. Appends a
    section to `out` (None: no file).

    Returns:
        The env's and the raw loop's calls per inner step.
    """
    k = 10
    venv = BatchedTrainingVecEnv(
        family=FAMILY,
        family_kwargs=FAMILY_KWARGS,
        n=n,
        device=device,
        decision_interval=k,
    )
    env = _outer_operator_calls(_env_step(venv, n, 3), windows) / (windows * k)
    raw = _outer_operator_calls(raw_batched_loop(n, k, device), windows) / (windows * k)
    line = f"| {n} | {k} | {env:.1f} | {raw:.1f} | {env / raw:.2f}x |"
    log(
        f"operator calls per inner step: env {env:.1f}, raw loop {raw:.1f} "
        f"({env / raw:.2f}x)"
    )
    if out is not None:
        header = (
            f"\n## Operator calls, {datetime.date.today().isoformat()}\n\n"
            f"- command: `{command}`\n"
            f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s), device "
            f"{device}, torch {torch.__version__}; eager (no compile, no capture)\n"
            f"- problem: {FAMILY} {FAMILY_KWARGS}; outermost aten calls counted "
            f"with `torch.profiler` over {windows} windows\n\n"
            "| N | K | env calls per inner step | raw loop calls per inner step | "
            "env vs raw |\n|---|---|---|---|---|\n"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as handle:
            handle.write(header + line + "\n")
        log(f"appended to {out}")
    return env, raw


def throughput(
    ns: Sequence[int],
    *,
    seconds: float = 3.0,
    dummy_max_n: int = 256,
    ppo_timesteps: int = 4096,
    device: str = "cpu",
    compiled: bool = False,
    captured: bool = False,
    out: Path = BENCHMARKS_MD,
    command: str = "hyperpilot bench throughput",
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Inner steps/s of the raw loop, a DummyVecEnv of single envs, and the batched env.

    The problem is an MLP 64-128-10 on digits (batch 128, K=10). Arms are timed
    interleaved (`_timed`); the table is appended to `out`.

    Args:
        ns: Run counts N, one table row each.
        seconds: Time per measurement and arm.
        dummy_max_n: Largest N for the (slow) DummyVecEnv arm.
        ppo_timesteps: PPO timesteps for the env's share of PPO's wall time (0
            skips it).
        device: Where the inner runs go.
        compiled: Also time `BatchedTrainingVecEnv` with `torch.compile`.
        captured: Also time it with each window replayed as a CUDA graph
            (`capture`; CUDA only).
        out: The markdown file the table is appended to.
        command: The command line, written with the table.
        log: Where each row goes as it is measured.
    """
    k = 10
    settings = {"device": device, "decision_interval": k}
    rows = []
    for n in ns:
        batched_env = BatchedTrainingVecEnv(
            family=FAMILY, family_kwargs=FAMILY_KWARGS, n=n, **settings
        )
        arms = {
            "raw": raw_batched_loop(n, k, device),
            "batched": _env_step(batched_env, n, 3),
        }
        if compiled:
            compiled_env = BatchedTrainingVecEnv(
                family=FAMILY,
                family_kwargs=FAMILY_KWARGS,
                n=n,
                compile=True,
                **settings,
            )
            arms["compiled"] = _env_step(compiled_env, n, 3)
        if captured:
            captured_env = BatchedTrainingVecEnv(
                family=FAMILY,
                family_kwargs=FAMILY_KWARGS,
                n=n,
                capture=True,
                **settings,
            )
            arms["captured"] = _env_step(captured_env, n, 3)
        if n <= dummy_max_n:
            dummy_env = DummyVecEnv(
                [lambda: InnerTrainingEnv(FAMILY, FAMILY_KWARGS, **settings)] * n
            )
            arms["dummy"] = _env_step(dummy_env, n, 3)
        row = Row(n, k, **_timed(arms, seconds))
        rows.append(row)
        log(row.markdown())

    ppo_line = ""
    if ppo_timesteps:
        share, fps = ppo_env_share(ppo_timesteps, settings)
        ppo_line = (
            f"\nUnder PPO (N=64, n_steps=16, batch_size=256): the env took "
            f"{share:.0%} of wall time ({fps:.0f} transitions/s).\n"
        )
        log(ppo_line.strip())
    _append_markdown(out, command, rows, k, ppo_line, device)
    log(f"appended to {out}")
    return rows


def ray_throughput(
    ns: Sequence[int],
    *,
    workers: int = 2,
    address: str | None = None,
    seconds: float = 3.0,
    device: str = "cpu",
    out: Path = BENCHMARKS_MD,
    command: str = "hyperpilot bench throughput --backend ray",
    log: Callable[[str], None] = print,
) -> list[RayRow]:
    """Seconds per decision window: local `BatchedTrainingVecEnv` vs `RayVecEnv`.

    Both arms run the same problem and N; the Ray arm cuts the bucket among
    `min(workers, N)` actors (with a CUDA device, one GPU each). Joins the Ray
    cluster at `address` (or starts a local one) for the measurement.
    """
    k = 10
    settings = {"device": device, "decision_interval": k}
    gpus = 1.0 if device.startswith("cuda") else 0.0
    started = ray_backend.connect(address)  # no cluster there: a one-line error
    rows = []
    try:
        for n in ns:
            local = BatchedTrainingVecEnv(
                family=FAMILY, family_kwargs=FAMILY_KWARGS, n=n, **settings
            )
            row = RayRow(n, k, min(workers, n))
            remote = RayVecEnv(
                family=FAMILY,
                family_kwargs=FAMILY_KWARGS,
                n=n,
                workers=row.workers,
                gpus_per_worker=gpus,
                **settings,
            )
            try:
                arms = {"local": _env_step(local, n, 3), "ray": _env_step(remote, n, 3)}
                timed = _timed(arms, seconds)
                row.local, row.ray = timed["local"], timed["ray"]
            finally:
                remote.close()
            rows.append(row)
            log(row.markdown())
    finally:
        if started:
            ray_backend.shutdown()
    header = (
        f"\n## Ray throughput, {datetime.date.today().isoformat()}\n\n"
        f"- command: `{command}`\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"{platform.processor() or 'cpu'}, device {device}, torch "
        f"{torch.__version__}; one torch thread per process; Ray workers hold "
        "1 CPU each\n"
        f"- problem: {FAMILY} {FAMILY_KWARGS}, K={k}; the Ray arm cuts the one "
        "bucket of N runs among its workers\n\n"
        f"{RayRow.HEADER}\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as handle:
        handle.write(header + "\n".join(r.markdown() for r in rows) + "\n")
    log(f"appended to {out}")
    return rows


@dataclass
class RayRow:
    """Seconds per decision window of the local and the Ray arm."""

    n: int
    k: int
    workers: int
    local: float = math.nan
    ray: float = math.nan

    HEADER: ClassVar[str] = (
        "| N | Ray workers | local inner steps/s | Ray inner steps/s | Ray vs local | "
        "local ms/window | Ray ms/window |\n|---|---|---|---|---|---|---|"
    )

    def markdown(self) -> str:
        """The row of the table."""
        return (
            f"| {self.n} | {self.workers} | {self.n * self.k / self.local:,.0f} | "
            f"{self.n * self.k / self.ray:,.0f} | {self.local / self.ray:.2f}x | "
            f"{self.local * 1e3:.1f} | {self.ray * 1e3:.1f} |"
        )


def ppo_env_share(timesteps: int, settings: dict) -> tuple[float, float]:
    """Share of PPO's wall time spent inside the VecEnv's step, and transitions/s."""

    class Timed(VecEnvWrapper):
        seconds = 0.0

        def reset(self):
            return self.venv.reset()

        def step_wait(self):
            start = time.perf_counter()
            result = self.venv.step_wait()
            Timed.seconds += time.perf_counter() - start
            return result

    venv = Timed(
        BatchedTrainingVecEnv(
            family=FAMILY, family_kwargs=FAMILY_KWARGS, n=64, **settings
        )
    )
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=256, n_epochs=4, seed=0)
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - start
    return Timed.seconds / wall, model.num_timesteps / wall


@dataclass
class Row:
    """Seconds per decision window (K inner steps of N runs) of each arm."""

    n: int
    k: int
    raw: float
    batched: float = math.nan
    dummy: float | None = None
    compiled: float | None = None
    captured: float | None = None

    HEADER: ClassVar[str] = (
        "| N | raw loop inner steps/s | DummyVecEnv inner steps/s | "
        "BatchedTrainingVecEnv inner steps/s | transitions/s | batched vs Dummy | "
        "env overhead vs raw | compiled inner steps/s | captured inner steps/s | "
        "captured overhead vs raw |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )

    def rate(self, seconds: float | None) -> str:
        """Inner steps per second, or '-' when not measured."""
        return "-" if seconds is None else f"{self.n * self.k / seconds:,.0f}"

    def markdown(self) -> str:
        """The row of the table."""
        speedup = "-" if self.dummy is None else f"{self.dummy / self.batched:.2f}x"
        captured = (
            "-" if self.captured is None else f"{self.captured / self.raw - 1:+.0%}"
        )
        return (
            f"| {self.n} | {self.rate(self.raw)} | {self.rate(self.dummy)} | "
            f"{self.rate(self.batched)} | {self.n / self.batched:,.0f} | {speedup} | "
            f"{self.batched / self.raw - 1:+.0%} | {self.rate(self.compiled)} | "
            f"{self.rate(self.captured)} | {captured} |"
        )


def _append_markdown(
    path: Path, command: str, rows: list[Row], k: int, ppo_line: str, device: str
) -> None:
    header = (
        f"\n## Throughput, {datetime.date.today().isoformat()}\n\n"
        f"- command: `{command}`\n"
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"{platform.processor() or 'cpu'}, device {device}, torch {torch.__version__}; "
        "all arms eager except the compiled and captured columns\n"
        f"- problem: {FAMILY} {FAMILY_KWARGS}, K={k}\n\n"
        f"{Row.HEADER}\n"
    )
    body = "\n".join(row.markdown() for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(header + body + "\n" + ppo_line)
