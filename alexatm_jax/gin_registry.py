"""Everything gin may bind, registered in one place, and `parse_gin` to read gin files.

Core modules (model, partitioning, training step) never import gin; they take plain
dataclasses and arguments. This module makes those objects configurable:

    ModelConfig     -> builds an `alexatm_jax.model.ModelConfig` (bind `ModelConfig.d_model = 512`)
    MeshConfig      -> `alexatm_jax.partitioning.MeshConfig` (mesh axis sizes)
    OptimizerConfig -> `alexatm_jax.training.optimizer.OptimizerConfig`
    train           -> the run function `alexatm_jax.training.trainer.train` (alexatm-train)

Gin files are looked up as given, then relative to the current directory, the repository root
and its `gin/` folder (so `--gin_file=models/tiny.gin` works from anywhere in the checkout).
"""

from __future__ import annotations

import inspect
import os
import pathlib
import re
from typing import Sequence

import gin

from alexatm_jax.model.config import ModelConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SEARCH_PATHS = (REPO_ROOT, REPO_ROOT / "gin")
_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.MULTILINE)


def _build_model_config(**fields) -> ModelConfig:
    return ModelConfig(**fields)


# Gin checks bindings against this signature, so a misspelt field fails at parse time.
_build_model_config.__signature__ = inspect.signature(ModelConfig)
gin_model_config = gin.external_configurable(_build_model_config, name="ModelConfig")


def model_config_from_gin() -> ModelConfig:
    """A ModelConfig with the currently parsed `ModelConfig.*` bindings applied."""
    return gin_model_config()


def search_paths(extra: Sequence[str | os.PathLike] = ()) -> list[pathlib.Path]:
    """Where gin files are looked for, in order: `extra`, the current directory, the defaults."""
    paths = [pathlib.Path(p).absolute() for p in extra]
    paths += [pathlib.Path.cwd(), *DEFAULT_SEARCH_PATHS]
    return list(dict.fromkeys(paths))


def resolve_gin_file(name: str | os.PathLike, paths: Sequence[pathlib.Path],
                     included_from: pathlib.Path | None = None) -> pathlib.Path:
    """The existing file `name` refers to; FileNotFoundError names every place searched.

    Like gin's own `include`, relative names are tried against each search path in turn.
    """
    candidate = pathlib.Path(name).expanduser()
    tried = [candidate] if candidate.is_absolute() else [base / candidate for base in paths]
    for path in tried:
        if path.is_file():
            return path.resolve()
    where = f" (included from {included_from})" if included_from else ""
    raise FileNotFoundError(f"gin file {str(name)!r}{where} not found; searched: "
                            + ", ".join(str(p) for p in tried))


def _check_includes(path: pathlib.Path, paths: Sequence[pathlib.Path],
                    seen: set[pathlib.Path]) -> None:
    if path in seen:
        return
    seen.add(path)
    for name in _INCLUDE.findall(path.read_text()):
        _check_includes(resolve_gin_file(name, paths, included_from=path), paths, seen)


def parse_gin(gin_files: Sequence[str | os.PathLike], bindings: Sequence[str] = (),
              extra_search_paths: Sequence[str | os.PathLike] = ()) -> list[pathlib.Path]:
    """Replace gin's configuration with `gin_files` (in order) then `bindings`.

    Every file and every file it includes must exist (checked before anything is parsed).
    Returns the resolved paths of `gin_files`.
    """
    paths = search_paths(extra_search_paths)
    resolved = [resolve_gin_file(name, paths) for name in gin_files]
    seen: set[pathlib.Path] = set()
    for path in resolved:
        _check_includes(path, paths, seen)
    gin.clear_config()
    for path in paths:
        gin.add_config_file_search_path(str(path))
    gin.parse_config_files_and_bindings([str(p) for p in resolved], list(bindings))
    return resolved


# --- the training run (alexatm-train): MeshConfig, OptimizerConfig and `train` -------------------
# Builders with the dataclasses' signatures, so gin returns the real (frozen) dataclasses.
from alexatm_jax.partitioning import MeshConfig  # noqa: E402
from alexatm_jax.training import trainer  # noqa: E402
from alexatm_jax.training.optimizer import OptimizerConfig  # noqa: E402


def _build_mesh_config(**fields) -> MeshConfig:
    return MeshConfig(**fields)


def _build_optimizer_config(**fields) -> OptimizerConfig:
    return OptimizerConfig(**fields)


_build_mesh_config.__signature__ = inspect.signature(MeshConfig)
_build_optimizer_config.__signature__ = inspect.signature(OptimizerConfig)
gin_mesh_config = gin.external_configurable(_build_mesh_config, name="MeshConfig")
gin_optimizer_config = gin.external_configurable(_build_optimizer_config, name="OptimizerConfig")
gin_train = gin.external_configurable(trainer.train, name="train")
