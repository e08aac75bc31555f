"""Run configuration: dataclass defaults < YAML file < command-line overrides.

``load_config(TrainConfig, "run.yaml", {"lr": 1e-4, "model.depth": 6})`` builds the (possibly
nested) dataclass, so ``__post_init__`` validation runs on the final values. Unknown keys are
errors naming the key and where it came from; values are coerced to the annotated field types
where that is lossless (a YAML list for a tuple, ``3e-4`` -- a string to YAML 1.1 -- for a float,
a string for a Path). ``save_resolved_config`` writes the result next to the run's outputs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from mvmae.shards.writer import atomic_write_bytes

T = TypeVar("T")
OVERRIDES_SOURCE = "command-line overrides"
_Layer = tuple[Mapping[str, Any], str]  # (values, where they came from)


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key and its source."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _expand_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a.b': 1, 'c': {'d': None}} -> {'a': {'b': 1}}: dotted keys nested, None values dropped
    (an option the user did not give)."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            value = _expand_overrides(value, f"{prefix}{key}.")
        *parents, leaf = str(key).split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{OVERRIDES_SOURCE}: '{prefix}{key}' conflicts with a value "
                                  f"given for '{prefix}{part}'")
        if isinstance(node.get(leaf), dict) and isinstance(value, dict):
            node[leaf].update(value)
        elif leaf in node:
            raise ConfigError(f"{OVERRIDES_SOURCE}: '{prefix}{key}' is given twice")
        else:
            node[leaf] = value
    return nested


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass in ``tp`` (also inside ``Optional[...]``), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _coerce_union(value: Any, args: tuple, key: str, source: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, arg, key, source)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[-1] if errors else f"{source}: '{key}' cannot be None")


def _coerce_sequence(value: Any, tp: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{source}: '{key}' needs {len(args)} values, got {list(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    items = [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` as annotated type ``tp``, or a ConfigError naming ``key`` and ``source``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key, source)
    if origin in (tuple, list):
        return _coerce_sequence(value, tp, key, source)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{source}: '{key}' must be one of {typing.get_args(tp)}, got {value!r}")
        return value
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp in (int, float):
            if not isinstance(value, bool) and isinstance(value, (int, float, str)):
                converted = tp(value)
                if tp is float or converted == float(value):
                    return converted
        elif tp is str:
            if isinstance(value, str):
                return value
        elif tp is Path:
            if isinstance(value, (str, Path)):
                return Path(value)
        else:
            return value  # dict, custom types: left to __post_init__
    except (TypeError, ValueError):
        pass
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{source}: '{key}' must be {name}, got {value!r}")


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _shallow(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def _nested_layers(field: dataclasses.Field, sub: type, present: list, key: str) -> list[_Layer]:
    """Layers for a nested dataclass field: its default instance first, then each source."""
    default = _field_default(field)
    layers = [(_shallow(default), "defaults")] if isinstance(default, sub) else []
    for value, source in present:
        if isinstance(value, sub):
            layers.append((_shallow(value), source))
        elif isinstance(value, Mapping):
            layers.append((value, source))
        else:
            raise ConfigError(f"{source}: '{key}' must be a mapping of {sub.__name__} fields, "
                              f"got {value!r}")
    return layers


def _build(cls: type[T], layers: list[_Layer], prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from value layers (later layers win)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for data, source in layers:
        for key in data:
            if key not in fields:
                raise ConfigError(f"{source}: unknown key '{prefix}{key}' for {cls.__name__} "
                                  f"(known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        present = [(data[name], source) for data, source in layers if name in data]
        if not present:
            continue  # the dataclass default applies
        key, sub = f"{prefix}{name}", _dataclass_type(hints[name])
        if sub is not None and present[-1][0] is not None:
            kwargs[name] = _build(sub, _nested_layers(field, sub, present, key), f"{key}.")
        else:
            value, source = present[-1]
            kwargs[name] = _coerce(value, hints[name], key, source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        sources = ", ".join(dict.fromkeys(s for _, s in layers)) or "defaults"
        where = f" '{prefix[:-1]}'" if prefix else ""
        raise ConfigError(f"{sources}: invalid {cls.__name__}{where}: {exc}") from exc


def load_config(cls: type[T], yaml_path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> T:
    """Build dataclass ``cls``: its defaults, then the YAML file, then ``overrides`` (keys
    'a.b' or nested dicts; None values are ignored, so unset CLI options do not override)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    layers: list[_Layer] = []
    if yaml_path is not None:
        layers.append((_read_yaml(Path(yaml_path)), str(yaml_path)))
    if overrides:
        layers.append((_expand_overrides(overrides), OVERRIDES_SOURCE))
    return _build(cls, layers)


def fill_missing(saved: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` (a config as a checkpoint stores it) with ``values`` (dotted keys) set where it
    lacks them: a checkpoint written before a field existed ran with that field's old default,
    not today's (the configs' ``LEGACY_DEFAULTS``)."""
    out = dict(saved)
    for dotted, value in values.items():
        *parents, name = dotted.split(".")
        node = out
        for parent in parents:
            if not isinstance(node.get(parent), Mapping):
                break
            node[parent] = dict(node[parent])
            node = node[parent]
        else:
            node.setdefault(name, value)
    return out


def plain_data(value: Any) -> Any:
    """``value`` as plain YAML/JSON-safe data: dataclasses as dicts, tuples as lists, paths as
    strings (what a config looks like once saved and read back)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain YAML/JSON-safe data (tuples as lists, paths as strings)."""
    return plain_data(dataclasses.asdict(obj))


def save_resolved_config(obj: Any, path: str | Path) -> Path:
    """Write dataclass ``obj`` as YAML to ``path`` atomically (``load_config`` reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(obj), sort_keys=False, default_flow_style=None)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
