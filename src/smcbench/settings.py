"""One schema per settings group (training, task data, each method's settings), from which the grid spec's YAML
schema, the CLI options and a run's identity all follow.

A group is a `Settings` subclass: typed fields with defaults, constraints and a description. From it:
- `identity()`: the fields that differ from their defaults, which is what a run's id hashes. A field added later
  with a default therefore never changes the id of a run that did not set it. Changing an existing default
  changes what an omitted field means: bump `SCHEMA_VERSION` in runner.identity and migrate.
- `validate_overrides()`: checks the keys a grid spec block or the command line sets, before anything runs.
- `cli_parameters()`: typer options, one per field (`--max-length`, ...), for commands that take the group.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from smcbench.errors import SmcBenchError


class SettingsError(SmcBenchError):
    """A bad settings value: which group (or where), which field, what is wrong."""

    def __init__(self, where: str, field: str, problem: str, sep: str = ": ") -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{where}{sep}{field}: {problem}")


def _first(err: ValidationError) -> tuple[str, str]:
    """(dotted field path, problem) of a validation error's first entry; a nested settings group's own error
    (raised by its __init__ inside a larger model) is unwrapped so the path reaches the field."""
    first = err.errors()[0]
    path = [str(p) for p in first["loc"]]
    problem = first["msg"].removeprefix("Value error, ")
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, SettingsError):
        path.append(cause.field)
        problem = cause.problem
    elif first["type"] == "extra_forbidden":
        problem = "unknown setting"
    return ".".join(path) or "(top level)", problem


def one_line(err: ValidationError, where: str = "") -> str:
    """The first problem of a validation error as one line: where, which field, what is wrong."""
    field, problem = _first(err)
    return f"{where + ': ' if where else ''}{field}: {problem}"


class Settings(BaseModel):
    """A settings group: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields set by the program rather than the user (e.g. the training seed follows the run's seed): kept out of
    # the spec schema and the CLI.
    INTERNAL: ClassVar[frozenset[str]] = frozenset()
    # Fields whose CLI form is not their type: name -> (CLI type, parser from the CLI value to the field's value).
    CLI_FORMS: ClassVar[dict[str, tuple[Any, Callable[[Any], Any]]]] = {}
    # Fields whose flag is not --field-name (e.g. a repeatable option named in the singular).
    CLI_FLAGS: ClassVar[dict[str, str]] = {}

    def __init__(self, **values: Any) -> None:
        # Bad values are the user's to fix: one line naming the field, never a pydantic traceback.
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise SettingsError(type(self).__name__, *_first(err)) from err

    @classmethod
    def build(cls, where: str, **values: Any) -> Self:
        """Validate `values`, the error line starting with `where` (e.g. "spec settings for gmp")."""
        try:
            return cls(**values)
        except SettingsError as err:
            raise SettingsError(where, err.field, err.problem) from err

    def uses_dense(self) -> bool:
        """Whether these settings make a run read the dense fine-tune of its configuration (e.g. distillation's
        teacher), whatever its method; a group that does says so by overriding this."""
        return False

    def identity(self) -> dict[str, Any]:
        """The fields that differ from their defaults, as JSON values: part of a run's id."""
        return self.model_dump(mode="json", exclude_defaults=True)

    @classmethod
    def user_fields(cls) -> dict[str, Any]:
        return {k: f for k, f in cls.model_fields.items() if k not in cls.INTERNAL}

    @classmethod
    def validate_overrides(cls, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The keys a user set (a grid spec block, the CLI), checked against the group's schema, validators
        included; unknown or internal keys and bad values are one-line errors naming the key. The values are
        returned as given: they are applied over other defaults (a task's) before the group is built."""
        internal = sorted(set(values) & cls.INTERNAL)
        if internal:
            raise SettingsError(where, internal[0], "set by the program, not a setting", ".")
        try:
            cls(**values)
        except SettingsError as err:
            raise SettingsError(where, err.field, err.problem, ".") from err
        return dict(values)

    @classmethod
    def cli_parameters(cls, skip: frozenset[str] = frozenset()) -> list[inspect.Parameter]:
        """One keyword-only typer option per user field, default None (= not given)."""
        import typer

        params = []
        for name, info in cls.user_fields().items():
            if name in skip:
                continue
            kind, _ = cls.CLI_FORMS.get(name, (_cli_type(info.annotation), None))
            flag = cls.CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
            if kind is bool:  # both ways: a field whose default is true must be switchable off
                flag = f"{flag}/--no-{flag[2:]}"
            option = typer.Option(None, flag, help=info.description or "")
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=kind | None))
        return params

    @classmethod
    def from_cli(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The options given on the command line (None: not given), parsed into field values."""
        out = {}
        for name in cls.user_fields():
            value = values.get(name)
            if value is None or (isinstance(value, list | tuple) and not value):
                continue
            _, parse = cls.CLI_FORMS.get(name, (None, None))
            out[name] = parse(value) if parse else value
        return out


def _cli_type(annotation: Any) -> Any:
    """The type a CLI option parses for a field: Literal and other choices become str (the schema checks them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _cli_type(args[0]) if len(args) == 1 else str
    if origin is Literal or (isinstance(annotation, type) and issubclass(annotation, Enum)):
        return str
    if annotation in (int, float, str, bool):
        return annotation
    if origin in (tuple, list) and typing.get_args(annotation) and typing.get_args(annotation)[0] is str:
        return list[str]
    return str
