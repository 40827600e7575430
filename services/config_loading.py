"""One typed configuration object per program, loadable from YAML and overridable by flags.

Every program (``serve``, ``train``, ``rm train``...) declares a pydantic model; the flags are derived from
its fields so that every field can be set on the command line without a second list of options to keep in
sync. Precedence: field defaults < the YAML file (``--config``) < flags. Nested models become dotted flags
(``--grpo.kl-coef 0.05``). Validation errors name the field, as ``ConfigError``.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each offending field."""


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def flag_name(dotted: str) -> str:
    """The command-line flag of a (possibly nested) field name, e.g. ``grpo.kl_coef`` -> ``--grpo.kl-coef``."""
    return "--" + dotted.replace("_", "-")


def config_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf field of ``model`` by dotted name, with its annotation (nested models flattened)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        if _is_model(annotation):
            out.update(config_fields(annotation, f"{prefix}{name}."))
        else:
            out[prefix + name] = field
    return out


def add_config_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], skip: frozenset[str] | set[str] = frozenset()
) -> None:
    """Adds ``--config`` and one flag per leaf field of ``model``; unset flags stay out of the namespace."""
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="YAML file with any of the fields below")
    for dotted, field in config_fields(model).items():
        if dotted in skip:
            continue
        annotation = _unwrap_optional(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = (field.description or "").replace("%", "%%")
        if field.is_required():
            help_text += " (required)"
        elif default is not None and not isinstance(default, BaseModel):
            help_text += f" (default: {default})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": dotted, "default": argparse.SUPPRESS, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = [str(c) for c in typing.get_args(annotation)]
        parser.add_argument(flag_name(dotted), **kwargs)


def _parse_flag_value(value: Any, annotation: Any) -> Any:
    """Turns a flag's string into what pydantic expects for lists (``a,b``) and dicts (``k=v,k=v``)."""
    if not isinstance(value, str) or typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return value  # unions (e.g. dict | list) are read by the model's own validator
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set):
        return [] if value == "" else [v.strip() for v in value.split(",")]
    if origin is dict:
        pairs = [p for p in value.split(",") if p.strip()]
        out = {}
        for pair in pairs:
            if "=" not in pair:
                raise ConfigError(f"expected key=value pairs separated by commas, got {value!r}")
            key, val = pair.split("=", 1)
            out[key.strip()] = val.strip()
        return out
    if value.lower() in ("none", "null") and annotation is not str:
        return None
    return value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:-1])}: expected a mapping in the YAML file")
    node[parts[-1]] = value


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        lines.append(
            f"{loc}: {e['msg']}"
            + (f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else "")
        )
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    model: type[M], args: argparse.Namespace | dict[str, Any] | None = None, yaml_path: Path | None = None
) -> M:
    """Builds ``model`` from defaults, then ``yaml_path`` (or ``args.config``), then the flags set in ``args``."""
    values = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args or {})
    yaml_path = yaml_path or values.pop("config", None)
    values.pop("config", None)
    data: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config file {yaml_path}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {yaml_path} must hold a mapping of field names to values")
        data = loaded
    fields = config_fields(model)
    for dotted, value in values.items():
        if dotted not in fields:
            continue
        _set_dotted(data, dotted, _parse_flag_value(value, _unwrap_optional(fields[dotted].annotation)))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def dump_config(config: BaseModel) -> str:
    """The YAML form of a config, loadable back with ``load_config``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
