"""`data_file`: an MLP or linear model trained on the user's own CSV or `.npz` file."""

from __future__ import annotations

import csv
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from hyperpilot.envs.tasks.base import (
    Range,
    TaskFamily,
    TaskInstance,
    build_model,
    classification_instance,
    draw,
    draw_int,
    instance_from_splits,
    mlp,
    mse,
    split_rows,
    standardize,
    torch_generator,
)
from hyperpilot.envs.tasks.registry import register_family

MIN_ROWS = 10
"""Fewest data rows a file may have."""

AUTO_MAX_CLASSES = 20
"""`loss="auto"` picks `ce` for an integral target with at most this many values."""

LOSSES = ("auto", "ce", "mse")
SUFFIXES = (".csv", ".npz")
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
"""CSV cells (lower-cased, stripped) read as missing values."""

_MLP_SPEC = re.compile(r"mlp:(\d+)x(\d+)")


@register_family("data_file")
class DataFile(TaskFamily):
    """A model trained on the user's own table, read from a CSV or `.npz` file.

    File formats:

    * `.csv`: a header row of column names, then one row per example, separated
      by commas. The column named `target` is the target; every other column is a
      feature. All cells must be numbers; empty cells and `NA`, `NaN`, `null`,
      `None`, `?` count as missing values, which are refused (drop or impute
      those rows first). Blank lines are skipped.
    * `.npz` (`numpy.savez`): a float array `x` of shape `[n, d]` and an array `y`
      of shape `[n]`; `target` must be left at its default or set to `"y"`.

    The file is read and checked once, when the family is built, so every problem
    is a one-line `ValueError` before any training. Each instance (`sample`) then
    draws its own shuffled train / val / test split of all rows (sizes fixed by the
    fractions), standardizes the features with the training rows' statistics,
    flips `label_noise` of the training labels (`ce`) or standardizes the target
    with the training rows' statistics (`mse`), and initializes the model.

    Attributes:
        path: The data file.
        columns: Feature names (`x0`, `x1`, ... for an `.npz`).
        loss_name: The resolved loss, `ce` or `mse`.
        classes: For `ce`, the original target value of each class index;
            `None` for `mse`.
        n_classes: Classes (`ce`), or 1 (`mse`).
        sizes: Rows per train / val / test split.
        batch_size: Rows per inner step, clamped to the training rows.

    Args:
        path: The `.csv` or `.npz` file (required).
        target: Name of the CSV target column.
        model: `mlp:WxD` (D hidden ReLU layers of W units, e.g. `mlp:64x2`) or
            `linear` (logistic regression for `ce`, linear regression for `mse`).
            Shape knob.
        loss: `ce` (classification: integer targets, the distinct values become
            classes 0..C-1 in sorted order), `mse` (regression), or `auto`: `ce`
            when the target takes at most 20 distinct values, all integers, else
            `mse`. Set it explicitly for an integer-valued regression target.
        batch_size: Rows per inner step (shape knob); clamped to the train rows.
        horizon: Inner steps per run (free).
        init_scale: Multiplier on the default initialization bound (free).
        label_noise: Share of training labels replaced by random classes (free);
            `ce` only, must be 0 for `mse`.
        val_fraction: Share of the rows in the validation split (shape knob).
        test_fraction: Share of the rows in the test split (shape knob); the
            training split gets the rest.

    Raises:
        ValueError: One line naming the file and the problem: a missing, empty,
            unreadable or unsupported file, no header row, an unknown target
            column, a non-numeric or missing value, too few rows, one class only,
            or an unknown `model` or `loss`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        target: str = "label",
        model: str = "mlp:64x2",
        loss: str = "auto",
        batch_size: int = 64,
        horizon: Range = 200,
        init_scale: Range = 1.0,
        label_noise: Range = 0.0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
    ) -> None:
        if path is None:
            raise ValueError(
                "task family 'data_file' needs path=...: a .csv file with a header "
                "row or an .npz file with arrays 'x' and 'y'"
            )
        self.path = Path(path).expanduser()
        self.model_spec, self.width, self.depth = _parse_model(model, self.path)
        loss = str(loss).strip().lower()
        if loss not in LOSSES:
            close = difflib.get_close_matches(loss, LOSSES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(
                self.path,
                f"unknown loss {loss!r}{hint}; use 'ce' (classification), "
                "'mse' (regression) or 'auto'",
            )
        self.horizon = horizon
        self.init_scale = init_scale
        self.label_noise = label_noise

        x, y, self.columns = _load(self.path, target)
        n = len(x)
        if n < MIN_ROWS:
            _fail(
                self.path,
                f"has only {n} data rows; need at least {MIN_ROWS} to split into "
                "train / val / test, add rows",
            )
        self.sizes = _split_sizes(n, val_fraction, test_fraction, self.path)

        self.loss_name = _resolve_loss(loss, y)
        if self.loss_name == "ce":
            if not np.all(y == np.round(y)):
                row = int(np.flatnonzero(y != np.round(y))[0])
                _fail(
                    self.path,
                    f"loss 'ce' needs integer class labels, but target row {row + 1} "
                    f"is {y[row]:g}; use loss='mse' for a regression target",
                )
            values, labels = np.unique(y, return_inverse=True)
            if len(values) < 2:
                _fail(
                    self.path,
                    f"the target has one class only ({values[0]:g}); a classifier "
                    "needs at least two, check the target column",
                )
            self.classes: tuple[float, ...] | None = tuple(
                int(v) if float(v).is_integer() else float(v) for v in values
            )
            self.n_classes = len(values)
            self._y = torch.from_numpy(labels.reshape(-1).astype(np.int64))
        else:
            if np.all(y == y[0]):
                _fail(
                    self.path,
                    f"the target is constant ({y[0]:g}); there is nothing to "
                    "regress, check the target column",
                )
            if _nonzero(label_noise):
                _fail(
                    self.path,
                    "label_noise applies to classification (loss 'ce') only; "
                    "leave it at 0 for this regression target",
                )
            self.classes = None
            self.n_classes = 1
            self._y = torch.from_numpy(y.astype(np.float32).reshape(-1, 1))
        self._x = torch.from_numpy(x.astype(np.float32))
        self.n_features = self._x.shape[1]
        if int(batch_size) < 1:
            _fail(self.path, f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = min(int(batch_size), self.sizes[0])

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Features, outputs, model spec, batch size and split sizes."""
        return (
            self.n_features,
            self.n_classes,
            self.model_spec,
            self.batch_size,
            self.sizes,
        )

    def _model(self) -> torch.nn.Module:
        return mlp(self.n_features, self.width, self.depth, self.n_classes)

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        """Draws the split, label flips (`ce`) and the initial weights."""
        knobs: dict[str, Any] = {}
        if self.loss_name == "ce":
            knobs["label_noise"] = draw(rng, self.label_noise)
        knobs["init_scale"] = draw(rng, self.init_scale)
        knobs["horizon"] = draw_int(rng, self.horizon)
        generator = torch_generator(rng)
        x_train, y_train, x_val, y_val, x_test, y_test = split_rows(
            self._x, self._y, self.sizes, generator
        )
        x_train, x_val, x_test = standardize(x_train, x_val, x_test)
        splits = (x_train, y_train, x_val, y_val, x_test, y_test)
        if self.loss_name == "ce":
            return classification_instance(
                self.name,
                self._model,
                splits,
                n_classes=self.n_classes,
                knobs=knobs,
                batch_size=self.batch_size,
                generator=generator,
                rng=rng,
            )
        y_train, y_val, y_test = standardize(y_train, y_val, y_test)
        model = build_model(self._model, generator, knobs["init_scale"])
        return instance_from_splits(
            self.name,
            model,
            (x_train, y_train, x_val, y_val, x_test, y_test),
            loss=mse,
            batch_size=self.batch_size,
            knobs=knobs,
            rng=rng,
        )


# --- checks -------------------------------------------------------------------


def _fail(path: Path, problem: str) -> NoReturn:
    """Raises the family's one-line error about `path`."""
    message = f"data file '{path}': {problem}"
    raise ValueError(message.replace("\r", " ").replace("\n", " "))


def _parse_model(spec: str, path: Path) -> tuple[str, int, int]:
    """`(normalized spec, width, depth)` of `linear` or `mlp:WxD`."""
    text = str(spec).strip().lower().replace(" ", "")
    if text == "linear":
        return "linear", 0, 0
    match = _MLP_SPEC.fullmatch(text)
    if match and int(match[1]) >= 1:
        width, depth = int(match[1]), int(match[2])
        return (f"mlp:{width}x{depth}", width, depth) if depth else ("linear", 0, 0)
    _fail(
        path,
        f"unknown model {spec!r}; use 'linear' or 'mlp:WxD' for D hidden layers "
        "of W units (e.g. 'mlp:64x2')",
    )


def _nonzero(spec: Range) -> bool:
    if isinstance(spec, int | float):
        return spec != 0
    return any(float(v) != 0 for v in spec)


def _split_sizes(
    n: int, val_fraction: float, test_fraction: float, path: Path
) -> tuple[int, int, int]:
    """Train / val / test rows: val and test rounded from the fractions, train the rest."""
    val, test = float(val_fraction), float(test_fraction)
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        _fail(
            path,
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must "
            "each be in (0, 1) and sum to less than 1",
        )
    n_val = max(1, round(n * val))
    n_test = max(1, round(n * test))
    n_train = n - n_val - n_test
    if n_train < 2:
        _fail(
            path,
            f"{n} rows leave {n_train} for training after val_fraction={val} and "
            f"test_fraction={test}; lower the fractions or add rows",
        )
    return n_train, n_val, n_test


def _resolve_loss(loss: str, y: np.ndarray) -> str:
    if loss != "auto":
        return loss
    integral = bool(np.all(y == np.round(y)))
    if integral and len(np.unique(y)) <= AUTO_MAX_CLASSES:
        return "ce"
    return "mse"


# --- loading ------------------------------------------------------------------


def _load(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Reads and checks the file: float64 features `[n, d]`, target `[n]`, names."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        _fail(
            path,
            f"unsupported file type {path.suffix or '(no extension)'!r}; "
            "use a .csv file with a header row or an .npz file with arrays 'x' and 'y'",
        )
    if not path.exists():
        _fail(path, f"not found (looked in {Path.cwd()}); check the path")
    if not path.is_file():
        _fail(path, "is not a file; pass the path of a .csv or .npz file")
    if path.stat().st_size == 0:
        _fail(path, "is empty; it needs a header row and at least 10 data rows")
    if suffix == ".npz":
        return _load_npz(path, target)
    return _load_csv(path, target)


def _load_npz(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    if target not in ("label", "y"):
        _fail(
            path,
            f"an .npz file always uses array 'y' as the target; leave --target "
            f"(target= in Python) out or set it to y (got {target!r})",
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k in ("x", "y")}
            names = list(data.files)
    except Exception as error:  # any read failure is a problem of the user's file
        _fail(path, f"cannot be read as .npz ({error}); save it with numpy.savez")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        _fail(
            path,
            f"has no array {' or '.join(map(repr, missing))} (found "
            f"{', '.join(map(repr, names)) or 'none'}); save it with "
            "numpy.savez(path, x=features, y=targets)",
        )
    x, y = arrays["x"], arrays["y"]
    for key, array in arrays.items():
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            _fail(path, f"array {key!r} has dtype {array.dtype}; it must be numeric")
    if x.ndim != 2:
        _fail(path, f"array 'x' has shape {x.shape}; it must be [n, d]")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        _fail(path, f"array 'y' has shape {y.shape}; it must be [n]")
    if len(x) != len(y):
        _fail(path, f"'x' has {len(x)} rows but 'y' has {len(y)}; they must match")
    if x.shape[1] == 0:
        _fail(path, "array 'x' has no feature columns; it must be [n, d] with d >= 1")
    x, y = x.astype(np.float64), y.astype(np.float64)
    columns = tuple(f"x{i}" for i in range(x.shape[1]))
    for name, values in (("x", x), ("y", y)):
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            _fail(
                path,
                f"array {name!r} has {int(bad.sum())} missing or non-finite values "
                f"(first at row index {row}); drop or impute them",
            )
    return x, y, columns


def _load_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [cell.strip() for cell in row]
                    continue
                if len(row) != len(header):
                    _fail(
                        path,
                        f"line {reader.line_num} has {len(row)} fields but the "
                        f"header has {len(header)}; fix that row",
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        _fail(path, "is not UTF-8 text; save it as a UTF-8 CSV")
    except csv.Error as error:
        _fail(path, f"is not valid CSV ({error}); fix the file")
    if header is None:
        _fail(path, "is empty; it needs a header row and at least 10 data rows")
    if all(_is_number(cell) for cell in header):
        _fail(
            path,
            "has no header row (the first line is all numbers); add a first line "
            "of column names, one of them the target",
        )
    _check_header(path, header, target)
    if not rows:
        _fail(path, "has a header but no data rows; add at least 10 rows")
    values = _parse_cells(path, header, rows, lines)
    index = header.index(target)
    columns = tuple(name for i, name in enumerate(header) if i != index)
    return np.delete(values, index, axis=1), values[:, index], columns


def _check_header(path: Path, header: list[str], target: str) -> None:
    if "" in header:
        _fail(
            path,
            f"column {header.index('') + 1} of the header has no name; name every "
            "column",
        )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        _fail(path, f"the header repeats column {duplicates[0]!r}; rename it")
    if target not in header:
        lowered = {name.lower(): name for name in header}
        close = difflib.get_close_matches(target.lower(), list(lowered), n=1)
        hint = f" Did you mean --target {lowered[close[0]]}?" if close else ""
        shown = ", ".join(map(repr, header[:20]))
        if len(header) > 20:
            shown += f", ... ({len(header) - 20} more)"
        sep = ""
        if len(header) == 1 and any(c in header[0] for c in ";\t|"):
            sep = " The file does not look comma-separated; save it with commas."
        _fail(
            path,
            f"target column {target!r} not found; columns: {shown}.{hint}{sep} "
            "Pass --target COLUMN (target= in Python)",
        )
    if len(header) < 2:
        _fail(path, "has only the target column; it needs at least one feature")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _parse_cells(
    path: Path, header: list[str], rows: list[list[str]], lines: list[int]
) -> np.ndarray:
    """The cells as float64 `[n, columns]`; the first bad cell is named in the error."""
    try:
        values = np.array(rows, dtype=np.str_).astype(np.float64)
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass
    values = np.empty((len(rows), len(header)), dtype=np.float64)
    n_missing = 0
    first_missing = ""
    for number, (row, line) in enumerate(zip(rows, lines, strict=True), 1):
        for column, (name, cell) in enumerate(zip(header, row, strict=True)):
            text = cell.strip()
            where = f"column {name!r}, row {number} (file line {line})"
            if text.lower() in MISSING:
                n_missing += 1
                first_missing = first_missing or where
                continue
            try:
                value = float(text)
            except ValueError:
                _fail(
                    path,
                    f"non-numeric value {text[:40]!r} in {where}; every column "
                    "must be a number (encode categories as integers)",
                )
            if math.isnan(value):
                n_missing += 1
                first_missing = first_missing or where
            elif not math.isfinite(value):
                _fail(
                    path,
                    f"non-finite value {text!r} in {where}; replace it by a "
                    "finite number",
                )
            values[number - 1, column] = value
    if n_missing:
        _fail(
            path,
            f"has {n_missing} missing values (first: {first_missing}); drop "
            "or impute those rows",
        )
    return values
