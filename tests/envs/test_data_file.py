"""The `data_file` family: a user's own CSV or .npz as a task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import Episode
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks import make_family

DATA_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
N_ROWS = 100


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def table(seed=0, n=N_ROWS, regression=False):
    """Features `[n, 4]` and a 3-class integer or a float target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    if regression:
        y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=n)
    else:
        y = np.digitize(x[:, 0] + x[:, 1], [-0.5, 0.5]) + 3  # classes 3, 4, 5
    return x, y


@pytest.fixture
def class_csv(tmp_path):
    x, y = table()
    rows = [[*map(float, r), int(t)] for r, t in zip(x, y, strict=True)]
    return write_csv(tmp_path / "classes.csv", ["a", "b", "c", "d", "label"], rows)


@pytest.fixture
def reg_csv(tmp_path):
    x, y = table(regression=True)
    rows = [[*map(float, r), float(t)] for r, t in zip(x, y, strict=True)]
    return write_csv(tmp_path / "reg.csv", ["a", "b", "c", "d", "price"], rows)


@pytest.fixture
def class_npz(tmp_path):
    x, y = table()
    path = tmp_path / "classes.npz"
    np.savez(path, x=x, y=y)
    return path


def sample(path, seed=0, **kwargs):
    family = make_family("data_file", path=path, **kwargs)
    return family, family.sample(np.random.default_rng(seed))


def forward_backward(instance):
    x = instance.x_train[: instance.batch_size]
    y = instance.y_train[: instance.batch_size]
    loss = instance.loss(instance.model(x), y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, param in instance.model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


# --- building and sampling ----------------------------------------------------


def test_classification_csv(class_csv):
    family, instance = sample(class_csv)
    assert family.loss_name == "ce"
    assert family.classes == (3, 4, 5)
    assert family.columns == ("a", "b", "c", "d")
    assert family.shape_key == (4, 3, "mlp:64x2", 60, (60, 20, 20))
    assert instance.family == "data_file"
    assert instance.y_train.dtype == torch.int64
    assert set(instance.y_train.tolist()) <= {0, 1, 2}
    assert instance.accuracy is not None
    assert instance.model(instance.x_val).shape == (20, 3)
    assert instance.knobs == {"label_noise": 0.0, "init_scale": 1.0, "horizon": 200}
    forward_backward(instance)


def test_regression_csv(reg_csv):
    family, instance = sample(reg_csv, target="price", model="linear")
    assert family.loss_name == "mse" and family.classes is None
    assert family.shape_key == (4, 1, "linear", 60, (60, 20, 20))
    assert instance.y_train.shape == (60, 1)
    assert instance.y_train.dtype == torch.float32
    assert instance.accuracy is None
    # the target is standardized with the training rows' statistics
    assert abs(float(instance.y_train.mean())) < 1e-5
    assert abs(float(instance.y_train.std()) - 1) < 1e-5
    assert len(list(instance.model.parameters())) == 2  # one linear layer
    forward_backward(instance)


def test_npz(class_npz):
    family, instance = sample(class_npz, model="mlp:8x1", batch_size=16)
    assert family.loss_name == "ce" and family.n_classes == 3
    assert family.columns == ("x0", "x1", "x2", "x3")
    assert family.shape_key == (4, 3, "mlp:8x1", 16, (60, 20, 20))
    forward_backward(instance)
    family, _ = sample(class_npz, target="y", loss="mse")
    assert family.loss_name == "mse"


def test_features_are_standardized_with_training_statistics(class_csv):
    _, instance = sample(class_csv)
    torch.testing.assert_close(
        instance.x_train.mean(0), torch.zeros(4), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(instance.x_train.std(0), torch.ones(4))
    assert instance.x_train.dtype == torch.float32


@pytest.mark.parametrize(
    ("regression", "loss", "expected"),
    [(False, "auto", "ce"), (True, "auto", "mse"), (False, "mse", "mse")],
)
def test_loss_choice(tmp_path, regression, loss, expected):
    x, y = table(regression=regression)
    rows = [[*r, t] for r, t in zip(x, y, strict=True)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "c", "d", "label"], rows)
    family, instance = sample(path, loss=loss)
    assert family.loss_name == expected
    forward_backward(instance)


def test_auto_picks_mse_for_many_integer_values(tmp_path):
    x, _ = table()
    y = np.arange(N_ROWS) % 25  # 25 distinct integers: more than 20
    rows = [[*r, t] for r, t in zip(x, y, strict=True)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "c", "d", "label"], rows)
    assert make_family("data_file", path=path).loss_name == "mse"
    assert make_family("data_file", path=path, loss="ce").n_classes == 25


def test_same_seed_gives_the_same_instance(class_csv):
    family = make_family("data_file", path=class_csv, init_scale=[0.5, 2.0])
    first, second = (family.sample(np.random.default_rng(3)) for _ in range(2))
    for field in DATA_FIELDS:
        assert torch.equal(getattr(first, field), getattr(second, field)), field
    for (name, a), b in zip(
        first.model.named_parameters(), second.model.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert first.knobs == second.knobs and first.data_seed == second.data_seed
    other = family.sample(np.random.default_rng(4))
    assert not torch.equal(first.x_train, other.x_train)


@pytest.mark.parametrize(
    ("n", "val", "test", "sizes"),
    [
        (100, 0.2, 0.2, (60, 20, 20)),
        (50, 0.1, 0.3, (30, 5, 15)),
        (13, 0.1, 0.1, (11, 1, 1)),
    ],
)
def test_sizes_follow_the_fractions(tmp_path, n, val, test, sizes):
    x, y = table(n=n)
    path = tmp_path / "t.npz"
    np.savez(path, x=x, y=y)
    family, instance = sample(path, val_fraction=val, test_fraction=test)
    assert family.sizes == sizes
    assert (len(instance.x_train), len(instance.x_val), len(instance.x_test)) == sizes
    assert family.batch_size == min(64, sizes[0])  # clamped to the train rows
    assert instance.batch_size == family.batch_size


def test_label_noise_flips_training_labels_only(class_csv):
    _, clean = sample(class_csv, seed=5)
    _, noisy = sample(class_csv, seed=5, label_noise=0.5)
    assert torch.equal(clean.x_train, noisy.x_train)
    assert not torch.equal(clean.y_train, noisy.y_train)
    assert torch.equal(clean.y_val, noisy.y_val)
    assert torch.equal(clean.y_test, noisy.y_test)


def test_free_knob_ranges_are_drawn(class_csv):
    family = make_family("data_file", path=class_csv, horizon=[50, 60])
    drawn = {family.sample(np.random.default_rng(s)).horizon for s in range(6)}
    assert len(drawn) > 1 and all(50 <= h <= 60 for h in drawn)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_instances_stack_in_the_engine(tmp_path, loss):
    x, y = table()
    path = tmp_path / "t.npz"
    np.savez(path, x=x, y=y)
    family = make_family("data_file", path=path, loss=loss, horizon=40)
    rng = np.random.default_rng(0)
    episodes = [Episode(family.sample(rng), 1e-2, 0.9, 1.0, True) for _ in range(2)]
    engine = BatchedEngine(2, EnvSettings(device="cpu"))
    obs = engine.start(range(2), episodes)
    assert torch.isfinite(obs).all()
    for _ in range(3):
        transition = engine.act(torch.zeros(2, 3))
        assert torch.isfinite(transition.reward).all()
        assert torch.isfinite(transition.val_loss).all()
    assert engine.step_count.tolist() == [30, 30]
    if loss == "ce":
        accuracy = engine.accuracy("test")
        assert ((accuracy >= 0) & (accuracy <= 1)).all()


# --- errors -------------------------------------------------------------------

HEADER = ["a", "b", "label"]


def good_rows(n=20):
    return [[i, i % 3, i % 2] for i in range(n)]


def case_missing_file(tmp_path):
    return {"path": tmp_path / "nope.csv"}, "not found"


def case_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    return {"path": tmp_path / "e.csv"}, "is empty"


def case_blank_file(tmp_path):
    (tmp_path / "e.csv").write_text("\n\n")
    return {"path": tmp_path / "e.csv"}, "is empty"


def case_no_header(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["1", "2", "0"], good_rows())
    return {"path": path}, "no header row"


def case_header_only(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, [])
    return {"path": path}, "no data rows"


def case_target_not_found(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, good_rows())
    return {"path": path, "target": "lable"}, "'lable' not found.*'a', 'b'.*'label'"


def case_target_case_mismatch(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, good_rows())
    return {"path": path, "target": "Label"}, "Did you mean --target label"


def case_non_numeric(tmp_path):
    rows = good_rows()
    rows[4][1] = "red"
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    pattern = r"non-numeric value 'red' in column 'b', row 5 \(file line 6\)"
    return {"path": path}, pattern


def case_missing_value(tmp_path):
    rows = good_rows()
    rows[2][0] = ""
    rows[7][1] = "NA"
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    return {"path": path}, "2 missing values.*column 'a', row 3"


def case_nan(tmp_path):
    rows = good_rows()
    rows[3][2] = "nan"
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    return {"path": path}, "1 missing values.*column 'label', row 4"


def case_infinite(tmp_path):
    rows = good_rows()
    rows[3][0] = "inf"
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    return {"path": path}, "non-finite value 'inf' in column 'a'"


def case_ragged_row(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, [*good_rows(), [1, 2]])
    return {"path": path}, "line 22 has 2 fields but the header has 3"


def case_too_few_rows(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, good_rows(6))
    return {"path": path}, "only 6 data rows; need at least 10"


def case_one_class(tmp_path):
    rows = [[i, i, 1] for i in range(20)]
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    return {"path": path}, "one class only"


def case_constant_regression_target(tmp_path):
    rows = [[i, i, 0.5] for i in range(20)]
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    return {"path": path}, "target is constant"


def case_ce_on_floats(tmp_path):
    rows = [[i, i, i / 7] for i in range(20)]
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    return {"path": path, "loss": "ce"}, "needs integer class labels"


def case_no_features(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["label"], [[i % 2] for i in range(20)])
    return {"path": path}, "at least one feature"


def case_semicolons(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a;b;label\n" + "".join(f"{i};1;0\n" for i in range(20)))
    return {"path": path}, "not look comma-separated"


def case_unknown_model(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, good_rows())
    return {"path": path, "model": "resnet"}, "unknown model 'resnet'.*mlp:WxD"


def case_unknown_loss(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, good_rows())
    return {"path": path, "loss": "cross_entropy"}, "unknown loss 'cross_entropy'"


def case_label_noise_on_regression(tmp_path):
    rows = [[i, i, i / 7] for i in range(20)]
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    return {"path": path, "label_noise": 0.1}, "label_noise applies to classification"


def case_bad_fractions(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, good_rows())
    return {"path": path, "val_fraction": 0.6, "test_fraction": 0.5}, "sum to less"


def case_npz_without_y(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.zeros((20, 2)), labels=np.zeros(20))
    return {"path": tmp_path / "t.npz"}, "has no array 'y' \\(found 'x', 'labels'\\)"


def case_npz_bad_shape(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.zeros(20), y=np.zeros(20))
    return {"path": tmp_path / "t.npz"}, "array 'x' has shape"


def case_npz_nan(tmp_path):
    x, y = table()
    x[5, 1] = np.nan
    np.savez(tmp_path / "t.npz", x=x, y=y)
    return {"path": tmp_path / "t.npz"}, "1 missing or non-finite values.*row index 5"


def case_npz_target(tmp_path):
    x, y = table()
    np.savez(tmp_path / "t.npz", x=x, y=y)
    return {"path": tmp_path / "t.npz", "target": "price"}, "always uses array 'y'"


def case_npz_corrupt(tmp_path):
    (tmp_path / "t.npz").write_text("not a zip\n")
    return {"path": tmp_path / "t.npz"}, "cannot be read as .npz"


def case_unsupported_extension(tmp_path):
    (tmp_path / "t.xlsx").write_text("a,b\n")
    return {"path": tmp_path / "t.xlsx"}, "unsupported file type '.xlsx'"


ERROR_CASES = [value for name, value in globals().items() if name.startswith("case_")]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda f: f.__name__[5:])
def test_errors_are_one_line_value_errors(tmp_path, case):
    kwargs, pattern = case(tmp_path)
    with pytest.raises(ValueError, match=pattern) as error:
        make_family("data_file", **kwargs)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"data file '{kwargs['path']}': ")


def test_no_path_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'data_file' needs path=") as error:
        make_family("data_file")
    assert "\n" not in str(error.value)


def test_errors_come_before_any_sampling(tmp_path):
    """A problem deep in the file surfaces when the family is built."""
    rows = good_rows(500)
    rows[-1][0] = "oops"
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    with pytest.raises(ValueError, match="row 500"):
        make_family("data_file", path=path)
