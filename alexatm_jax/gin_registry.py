"""Everything gin may bind, registered in one place, and `parse_gin` to read gin files.

Core modules (model, partitioning, training step) never import gin; they take plain
dataclasses and arguments. This module makes those objects configurable:

    ModelConfig     -> builds an `alexatm_jax.model.ModelConfig` (bind `ModelConfig.d_model = 512`)
    MeshConfig      -> `alexatm_jax.partitioning.MeshConfig` (mesh axis sizes)
    OptimizerConfig -> `alexatm_jax.training.optimizer.OptimizerConfig`
    train           -> `alexatm_jax.training.config.TrainConfig`, the whole run (alexatm-train,
                       alexatm-plan); `train_config_from_gin` builds it
    TaskMetricEval  -> `alexatm_jax.training.eval_hooks.TaskMetricEval` (train.eval_hooks)
    FewShotEval     -> `alexatm_jax.training.few_shot_eval.FewShotEval` (train.eval_hooks)

Gin files are looked up as given, then relative to the current directory, the repository root
and its `gin/` folder (so `--gin_file=models/tiny.gin` works from anywhere in the checkout).

`parse_gin` is strict where gin is lenient: a command-line binding of a macro that no parsed file
(or other binding) uses is an error, since gin would silently define a new macro
(`TRAIN_STEPSS = 3` next to the real TRAIN_STEPS). Unknown configurables and parameters were
errors already; every such error is raised as GinConfigError with the nearest known name.
A macro a run file marks `%gin.REQUIRED` (MODEL_DIR, TRAIN_STEPS, ...) that no experiment file or
binding sets is refused by its name.
"""

from __future__ import annotations

import difflib
import inspect
import os
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

import gin
from alexatm_jax.model.config import ModelConfig
from gin import config_parser

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SEARCH_PATHS = (REPO_ROOT, REPO_ROOT / "gin")


class GinConfigError(ValueError):
    """A gin file or binding names something that does not exist (the message names it and,
    when there is one, the nearest known name)."""


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


def resolve_gin_file(
    name: str | os.PathLike,
    paths: Sequence[pathlib.Path],
    included_from: pathlib.Path | None = None,
) -> pathlib.Path:
    """The existing file `name` refers to; FileNotFoundError names every place searched.

    Like gin's own `include`, relative names are tried against each search path in turn.
    """
    candidate = pathlib.Path(name).expanduser()
    tried = [candidate] if candidate.is_absolute() else [base / candidate for base in paths]
    for path in tried:
        if path.is_file():
            return path.resolve()
    where = f" (included from {included_from})" if included_from else ""
    raise FileNotFoundError(
        f"gin file {str(name)!r}{where} not found; searched: " + ", ".join(str(p) for p in tried)
    )


class _MacroRecorder(config_parser.ParserDelegate):
    """Parser delegate that records the macros a gin text references (and builds nothing)."""

    def __init__(self) -> None:
        self.referenced: set[str] = set()

    def configurable_reference(self, scoped_name: str, evaluate: bool) -> str:
        return scoped_name

    def macro(self, scoped_name: str) -> str:
        self.referenced.add(scoped_name)
        return scoped_name


def _statements(text: Any, recorder: _MacroRecorder) -> list:
    return list(config_parser.ConfigParser(text, recorder))


def _macro_name(statement: config_parser.BindingStatement) -> str | None:
    """The macro a binding statement defines (`NAME = value`), or None for `a.b = value`."""
    if statement.arg_name:
        return None
    return f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector


def _scan_files(
    paths: Sequence[pathlib.Path], search: Sequence[pathlib.Path], recorder: _MacroRecorder
) -> set[str]:
    """Check that every file and include exists; record the macros the files reference. Returns
    the macros the files define."""
    defined: set[str] = set()
    seen: set[pathlib.Path] = set()
    pending = list(paths)
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        with open(path, encoding="utf-8") as f:
            for statement in _statements(f, recorder):
                if isinstance(statement, config_parser.IncludeStatement):
                    pending.append(resolve_gin_file(statement.filename, search, included_from=path))
                elif isinstance(statement, config_parser.BindingStatement):
                    defined.add(_macro_name(statement) or "")
    defined.discard("")
    return defined


def _nearest(name: str, known: Any) -> str:
    """' (did you mean X?)' for the closest of `known` to `name`, or ''."""
    match = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _check_macro_bindings(
    bindings: Sequence[str], recorder: _MacroRecorder, defined: set[str]
) -> None:
    """Refuse a binding of a macro that nothing references: gin would define a new one."""
    macros = []
    for binding in bindings:
        for statement in _statements(binding, recorder):
            if isinstance(statement, config_parser.BindingStatement) and _macro_name(statement):
                macros.append((_macro_name(statement), binding))
    for name, binding in macros:
        if name not in recorder.referenced:
            known = recorder.referenced | defined
            raise GinConfigError(
                f"the binding {binding.strip()!r} sets the macro {name}, which no gin file uses"
                f"{_nearest(name, known)}; gin would define a new macro and the run would ignore "
                "it. Macros used by these files: "
                + (", ".join(sorted(recorder.referenced)) or "none")
            )


def _registered() -> dict[str, Any]:
    """{short name: configurable} of everything registered with gin (gin keeps no public list)."""
    from gin import config as gin_config

    return {
        selector.split(".")[-1]: configurable
        for selector, configurable in gin_config._REGISTRY.items()  # noqa: SLF001
        if not selector.startswith("gin.")
    }


def _explained(error: ValueError) -> GinConfigError:
    """gin's error for an unknown configurable or parameter, with the nearest known name."""
    message = str(error).strip()
    first = message.splitlines()[0] if message else ""
    required = re.match(
        r"(\w+)/macro\.value set to `%gin\.REQUIRED` but not subsequently "
        r"overridden",
        first,
    )
    if required:
        name = required.group(1)
        return GinConfigError(
            f"the macro {name} is required (%gin.REQUIRED in the run file) and "
            f"no gin file or binding sets it: define it in the experiment file "
            f"or pass --gin.{name}=..."
        )
    registered = _registered()
    hint = ""
    if first.startswith("No configurable matching"):
        name = first.split("'")[1].lstrip("@").rstrip("()") if "'" in first else ""
        hint = _nearest(name.split(".")[-1], registered)
    elif "doesn't have a parameter named" in first:
        owner, parameter = re.findall(r"'([^']*)'", first.replace("doesn't", "does not"))[:2]
        configurable = registered.get(owner.split(".")[-1])
        if configurable is not None:
            try:
                hint = _nearest(parameter, inspect.signature(configurable.wrapped).parameters)
            except (TypeError, ValueError):
                hint = ""
    return GinConfigError(message.replace(first, first + hint, 1) if hint else message)


def _parse(
    paths: Sequence[pathlib.Path], search: Sequence[pathlib.Path], bindings: Sequence[str]
) -> None:
    gin.clear_config()
    for path in search:
        gin.add_config_file_search_path(str(path))
    gin.parse_config_files_and_bindings([str(p) for p in paths], list(bindings))


def parse_gin(
    gin_files: Sequence[str | os.PathLike],
    bindings: Sequence[str] = (),
    extra_search_paths: Sequence[str | os.PathLike] = (),
) -> list[pathlib.Path]:
    """Replace gin's configuration with `gin_files` (in order) then `bindings`.

    Every file and every file it includes must exist (checked before anything is parsed), and
    every macro that `bindings` set must be used by a file or another binding. Unknown
    configurables or parameters raise GinConfigError with the nearest known name; a file that
    binds the data pipeline's configurables (MixtureConfig, ...) imports `tasks` to register them.
    Returns the resolved paths of `gin_files`.
    """
    paths = search_paths(extra_search_paths)
    resolved = [resolve_gin_file(name, paths) for name in gin_files]
    recorder = _MacroRecorder()
    defined = _scan_files(resolved, paths, recorder)
    _check_macro_bindings(bindings, recorder, defined)
    try:
        _parse(resolved, paths, bindings)
    except ValueError as error:
        if not str(error).startswith("No configurable matching") or "tasks" in sys.modules:
            raise _explained(error) from error
        try:
            import tasks  # noqa: F401  (registers MixtureConfig & co.; imports TensorFlow)
        except ImportError:
            raise _explained(error) from error
        try:
            _parse(resolved, paths, bindings)
        except ValueError as retry_error:
            raise _explained(retry_error) from retry_error
    return resolved


# --- the training run: MeshConfig, OptimizerConfig and TrainConfig (bound as `train`) -----------
# Builders with the dataclasses' signatures, so gin returns the real (frozen) dataclasses.
from alexatm_jax.partitioning import MeshConfig  # noqa: E402
from alexatm_jax.training.config import TrainConfig  # noqa: E402
from alexatm_jax.training.optimizer import OptimizerConfig  # noqa: E402


def _build_mesh_config(**fields) -> MeshConfig:
    return MeshConfig(**fields)


def _build_optimizer_config(**fields) -> OptimizerConfig:
    return OptimizerConfig(**fields)


def _build_train_config(**fields) -> TrainConfig:
    return TrainConfig(**fields)


_build_mesh_config.__signature__ = inspect.signature(MeshConfig)
_build_optimizer_config.__signature__ = inspect.signature(OptimizerConfig)
_build_train_config.__signature__ = inspect.signature(TrainConfig)
gin_mesh_config = gin.external_configurable(_build_mesh_config, name="MeshConfig")
gin_optimizer_config = gin.external_configurable(_build_optimizer_config, name="OptimizerConfig")
gin_train_config = gin.external_configurable(_build_train_config, name="train")


def train_config_from_gin() -> TrainConfig:
    """The TrainConfig the parsed gin configuration binds as `train.*`.

    Raises GinConfigError naming each field with no default that nothing binds (a `%gin.REQUIRED`
    macro left unset is refused by `parse_gin` already, by its name).
    """
    bindings = gin.get_bindings("train")
    missing = [
        f"train.{name}"
        for name, parameter in inspect.signature(TrainConfig).parameters.items()
        if name not in bindings and parameter.default is inspect.Parameter.empty
    ]
    if missing:
        raise GinConfigError(
            f"the gin configuration binds no {', '.join(missing)}: a run needs a run file such "
            "as gin/runs/pretrain.gin and a model file such as gin/models/tiny.gin"
        )
    return gin_train_config()


def run_config_from_gin() -> TrainConfig:
    """`train_config_from_gin()` with the model and tokenizer of `train.init_from` (a new run's
    starting checkpoint; alexatm_jax/training/checkpoint_model.py): what alexatm-train runs.
    A `ModelConfig` binding that contradicts the checkpoint raises CheckpointConflictError."""
    from alexatm_jax.training.checkpoint_model import model_from_checkpoint

    config = train_config_from_gin()
    bound = {name: getattr(config.model_config, name) for name in gin.get_bindings("ModelConfig")}
    return model_from_checkpoint(config, bound)


# --- evaluation during training (train.eval_hooks) ----------------------------------------------
from alexatm_jax.training.eval_hooks import TaskMetricEval  # noqa: E402
from alexatm_jax.training.few_shot_eval import FewShotEval  # noqa: E402


def _build_task_metric_eval(**fields) -> TaskMetricEval:
    return TaskMetricEval(**fields)


_build_task_metric_eval.__signature__ = inspect.signature(TaskMetricEval)
gin_task_metric_eval = gin.external_configurable(_build_task_metric_eval, name="TaskMetricEval")


def _build_few_shot_eval(**fields) -> FewShotEval:
    return FewShotEval(**fields)


_build_few_shot_eval.__signature__ = inspect.signature(FewShotEval)
gin_few_shot_eval = gin.external_configurable(_build_few_shot_eval, name="FewShotEval")
