"""Inner training problems: task families, their registry and the task splits."""

# Importing a family module registers its families.
from hyperpilot.envs.tasks import (  # noqa: F401
    blobs,
    coordinates,
    counts,
    data_file,
    deep,
    digits,
    embeddings,
    forecast,
    generative,
    quadratic,
    sequences,
    shapes,
    tabular,
    teacher,
    text,
)
from hyperpilot.envs.tasks.base import TaskFamily, TaskInstance
from hyperpilot.envs.tasks.registry import family_names, make_family, register_family

__all__ = [
    "TaskFamily",
    "TaskInstance",
    "family_names",
    "make_family",
    "register_family",
]
