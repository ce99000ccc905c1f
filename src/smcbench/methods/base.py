"""What a method is, for the runner, the grid and the report: an object registered by name that declares what it
needs (the dense fine-tune? a chain of levels?), how requested levels map to the ones it reaches, the schema of its
own settings, and how it runs. Nothing outside a method tests its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import Field
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.methods.recipe import RecipeSettings
from smcbench.settings import Settings
from smcbench.sparsity import ScoreContext, Sparsifier
from smcbench.training import Callback

DENSE = "dense"  # the name of the dense fine-tune, the reference every sparse method is compared with


class NoSettings(Settings):
    """A method without settings of its own."""


class SelectionSettings(Settings):
    """Which tensors a sparse method prunes (smcbench.sparsity.selection)."""

    preset: Literal["all", "encoder", "esm"] = Field(
        "all", description="Pruned tensors: all (the paper's main setting), encoder (embeddings and heads dense, "
        "Appendix C) or esm (attention Q, K, V, O and feed-forward Linear weights only, the paper's ESM setting).")
    include: tuple[str, ...] = Field((), description="Regexes: prune only the preset's tensors whose names match "
                                     "one (repeatable), e.g. a module ablation.")
    exclude: tuple[str, ...] = Field((), description="Regexes: keep the matching tensors dense (repeatable).")

    def sparsifier(self, model: nn.Module) -> Sparsifier:
        return Sparsifier(model, self.preset, self.include, self.exclude)

    def score_context(self, params: dict[str, nn.Parameter], loss: Any, batches: Any, seed: int) -> ScoreContext:
        """What a pruning score may draw on (`seed`: the run's); settings of particular scores add theirs."""
        return ScoreContext(params, loss=loss, batches=batches, seed=seed)


class SparseSettings(SelectionSettings, RecipeSettings):
    """What every sparse method takes: the pruned tensors and the Appendix C recipe (methods.recipe)."""


@dataclass
class Outcome:
    """A trained model of one method at one sparsity."""

    sparsity: float
    model: nn.Module
    sparsifier: Sparsifier | None
    train: Any  # training.TrainResult
    notes: dict = field(default_factory=dict)


class Experiment(Protocol):
    """What methods need: θ0, a fine-tune with callbacks, the shared dense model, batches for data-dependent
    scores. The runner implements it (caching the dense fine-tune); tests can implement it with tiny models."""

    settings: Any  # the running method's settings (an instance of its `settings` schema)
    total_steps: int
    batch_size: int
    seed: int  # the run's seed

    def initial_model(self) -> nn.Module:
        """θ0: pretrained weights and the head's seeded initial weights, identical at every call."""

    def fine_tune(self, model: nn.Module, callbacks: list[Callback], tag: str, steps: int | None = None) -> Any:
        """Train `model` in place with the full schedule (or `steps` updates of it); returns the TrainResult."""

    def untrained(self, model: nn.Module) -> Any:
        """A TrainResult for a model used as it is (no update), with its validation metric."""

    def dense_model(self) -> nn.Module:
        """A fresh copy of the dense fine-tune (trained once per experiment configuration)."""

    def loss(self, model: nn.Module, batch: dict) -> Any:
        """The training loss of `model` on `batch` (a tensor)."""

    def outputs(self, model: nn.Module, batch: dict) -> Any:
        """What the task's loss function returns for `batch` (a model output with `.loss`, maybe `.logits`)."""

    def score_batches(self, batch_size: int | None = None) -> Iterable[dict]:
        """Training batches in a seeded order (of the training batch size unless given)."""

    def source_masks(self, method: str, sparsity: float) -> dict:
        """The masks of `method`'s run at `sparsity` with this run's selection (run first if missing)."""

    def finished(self, method: str, sparsity: float) -> tuple[nn.Module, dict] | None:
        """The trained model and masks of a run finished earlier whose weights were kept, if any (lets a rerun
        chain resume)."""


@dataclass(frozen=True)
class ForwardShape:
    """What the dry run knows of a model's forward pass (runner.timing's probe, for `Method.extra_forwards`): how
    many input groups its Linear layers form (layers reading one tensor, in execution order) and whether each of
    them is called once per pass (a recurrent decoder's are not)."""

    linear_groups: int
    linear_once: bool


class Method(ABC):
    """A sparse training or pruning method. Subclass, set the class attributes, write `run`, register."""

    name: ClassVar[str]
    settings: ClassVar[type[Settings]] = NoSettings
    sparse: ClassVar[bool] = True  # False: its runs are dense (the reference, or a dense control)
    # The dense reference every sparse run is compared with (one per task configuration, trained once). A method
    # neither sparse nor the reference is a dense control: one run at sparsity 0, shown beside the reference in
    # the report and never judged (e.g. the equal-budget control of the After methods).
    reference: ClassVar[bool] = False
    needs_dense: ClassVar[bool] = False  # starts from the dense fine-tune, which the runner trains once and shares
    chained: ClassVar[bool] = False  # one run reaches its levels in a chain, each from the one before (LTH)
    # Later runs start from this run's trained weights (the dense fine-tune; a chain's latest level), so the
    # runner keeps them under the default retention policy (`--keep-weights needed`); other runs keep masks only.
    weights_reused: ClassVar[bool] = False
    # One call of `run` gets every pending level and trains what they share once (a learned-sparsity phase that
    # does not depend on the level); the grid makes one node of all its levels.
    shares_levels: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    # Bumped when a change to the method (or a default of its settings) changes what its runs mean: a version
    # other than 1 is part of the run's id (runner.identity), so older runs are never reused as newer ones.
    version: ClassVar[int] = 1
    # Seconds of one of its updates relative to a plain dense update (the dry run's time estimate; a method with
    # per-update extra work, e.g. learned gates, sets its own measured figure).
    step_cost: ClassVar[float] = 1.0
    # When it prunes, as the paper groups the methods: "after" (training: from the dense fine-tune, then retrained),
    # "during", "before" (on θ0), "post-training" (the dense fine-tune pruned and used as it is); "" for the dense
    # runs and controls. The report's findings compare the groups; `stage_for` refines it by the settings.
    stage: ClassVar[str] = ""

    def uses_dense(self, settings: Settings) -> bool:
        """Whether a run with these settings reads the dense fine-tune (its start, or a setting's teacher): the
        runner trains it first, the grid runs its node first."""
        return self.needs_dense or settings.uses_dense()

    def stage_for(self, settings: Settings) -> str:
        """The stage of a run with these settings (e.g. an After method told not to retrain is post-training)."""
        return self.stage

    def trainings(self, settings: Settings) -> float:
        """Full training schedules one run with these settings trains (the dry run's time estimate): 1 for most
        methods (the After methods' dense fine-tune is a run of its own); 0 for a model used as it is."""
        return 1.0

    def extra_updates(self, settings: Settings, updates: int, batch_size: int) -> float:
        """Work beyond its trainings, in plain dense updates of `batch_size` (the dry run's time estimate), for a
        method whose extra passes are large: oBERT's Fisher. `updates`: the updates of one training."""
        return 0.0

    def extra_forwards(self, settings: Settings, shape: ForwardShape) -> float:
        """Work beyond its trainings in no-grad forward passes of a training batch (the dry run's time estimate),
        for a method that runs the model many times without training it: layer-wise calibration."""
        return 0.0

    def levels(self, requested: list[float], settings: Settings | None = None) -> list[float]:
        """The levels the method reaches for the requested ones with these settings (an error when one is out of
        reach)."""
        return list(requested)

    def sources(self, settings: Settings) -> list[str]:
        """Methods whose runs at the same level this one reads (their masks): the grid runs them first."""
        return []

    def chain(self, level: float) -> list[float]:
        """A chained method: every level it trains on the way to `level`, in order, `level` last."""
        return [level]

    @abstractmethod
    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        """Train and yield one outcome per level (a chained method: one per level of its chain)."""


METHODS: dict[str, Method] = {}
M = TypeVar("M", bound=type[Method])
PLUGIN_GROUP = "smcbench.methods"  # entry points: modules that register methods (and scores) when imported
PLUGIN_ERRORS: list[str] = []  # plugins that failed to import: reported once, the rest works
PLUGIN_CLASH: list[str] = []  # a plugin whose method, score or setting clashes: every use of the registry refuses


def origin(obj: Any) -> str:
    """Where a class comes from, for an error line: its distribution (package) and module."""
    module = getattr(obj, "__module__", "?")
    try:
        from importlib.metadata import packages_distributions

        dists = packages_distributions().get(module.split(".")[0], [])
    except Exception:  # metadata of broken installs must not hide the real error
        dists = []
    return f"{module} ({dists[0]})" if dists else module


def register_method(cls: M) -> M:
    """Class decorator: make the method available by its name to `smc-bench run`, grid specs and the report. A
    name another method has, or a setting another method declares with another type (a setting is one CLI flag
    whatever the method; defaults may differ), is an error naming both."""
    if getattr(cls, "name", None) in (None, ""):
        raise TypeError(f"{cls.__name__} needs a name")
    known = METHODS.get(cls.name)
    if known is not None and (type(known).__module__, type(known).__qualname__) != (cls.__module__, cls.__qualname__):
        raise SmcBenchError(f"method {cls.name!r} of {origin(cls)} clashes with the method of that name in "
                            f"{origin(type(known))}: rename one of them")
    for other in METHODS.values():
        if other.name == cls.name:
            continue
        for key, info in cls.settings.user_fields().items():
            theirs = other.settings.user_fields().get(key)
            if theirs is not None and theirs.annotation != info.annotation:
                raise SmcBenchError(f"setting {key!r} of method {cls.name!r} ({origin(cls)}) differs from the "
                                    f"setting of that name of method {other.name!r} ({origin(type(other))}); "
                                    "a setting is one flag of `smc-bench run`: rename it (e.g. prefix it with "
                                    "the method's name)")
    METHODS[cls.name] = cls()
    return cls


def load_plugins() -> list[str]:
    """Import every module registered under the `smcbench.methods` entry-point group (a package outside this
    repository that adds methods and scores). One that fails to import is reported on stderr and skipped; a name
    clash is an error. Returns the failures."""
    import sys
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except SmcBenchError:
            raise
        except Exception as err:  # a broken plugin must not break every command
            dist = entry.dist.name if entry.dist is not None else "?"
            PLUGIN_ERRORS.append(f"plugin {entry.name!r} ({dist}, {entry.value}) failed to load and is skipped: "
                                 f"{type(err).__name__}: {err}")
            print(f"smc-bench: warning: {PLUGIN_ERRORS[-1]}", file=sys.stderr)
    return PLUGIN_ERRORS


def get_method(name: str) -> Method:
    if PLUGIN_CLASH:
        raise SmcBenchError(PLUGIN_CLASH[0])
    if name not in METHODS:
        raise SmcBenchError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def is_sparse(name: str, target_sparsity: float = 1.0) -> bool:
    """Whether the runs of method `name` are sparse (compared with the dense reference). A method no longer
    registered is judged by its target sparsity."""
    return METHODS[name].sparse if name in METHODS else target_sparsity > 0


def stage_of(name: str, settings: Mapping[str, Any]) -> str:
    """The stage (Method.stage) of a recorded run of method `name` with these settings ("" for a method no longer
    registered, or settings it no longer takes)."""
    method = METHODS.get(name)
    if method is None:
        return ""
    try:
        return method.stage_for(method.settings.build(name, **settings))
    except SmcBenchError:
        return method.stage


def is_reference(name: str) -> bool:
    """Whether method `name`'s runs are the dense reference (a method no longer registered: the name `dense`)."""
    return METHODS[name].reference if name in METHODS else name == DENSE


def known_settings() -> set[str]:
    return {k for m in METHODS.values() for k in m.settings.user_fields()}


def method_settings(name: str, values: Mapping[str, Any] | Settings, where: str, strict: bool = False) -> Settings:
    """Method `name`'s settings from a flat mapping. The mapping may be shared by several methods (a grid spec's
    `settings:`): each method takes the keys it declares; a key that no method declares is an error. `strict`: a
    key this method does not declare is an error too (one method on the command line)."""
    method = get_method(name)
    schema = method.settings
    if isinstance(values, schema):
        return values
    if isinstance(values, Settings):
        values = values.model_dump(exclude_defaults=True)
    own = schema.user_fields()
    unknown = sorted(k for k in values if k not in known_settings())
    if unknown:
        raise SmcBenchError(f"{where}: unknown setting(s) {unknown}: the methods' settings are "
                            f"{', '.join(sorted(known_settings()))}")
    foreign = sorted(k for k in values if k not in own)
    if strict and foreign:
        raise SmcBenchError(f"{where}: method {name} has no setting(s) {foreign}; its settings: "
                            f"{', '.join(own) or 'none'}")
    return schema.build(f"{where}: {name}", **{k: v for k, v in values.items() if k in own})
