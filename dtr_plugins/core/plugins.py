"""Plugin discovery and the registry of named factories.

pluggy's ``load_setuptools_entrypoints`` skips duplicate entry-point names silently and stops at the
first module that fails to import, so this module walks the ``dtr_plugins`` entry-point group itself,
remembers which distribution provided each plugin, and calls each hook implementation separately so
that every registration is attributed to its plugin.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import pluggy
from pydantic import BaseModel, ValidationError

from dtr_plugins.core import hookspecs
from dtr_plugins.core.errors import ConfigError, PluginError, UserError, first_line

ENTRY_POINT_GROUP = "dtr_plugins"

#: plugin kind -> the hook that registers it
KINDS: dict[str, str] = {
    "strategy": "dtr_register_strategies",
    "backbone": "dtr_register_backbones",
    "loss_weighting": "dtr_register_loss_weightings",
    "dataset": "dtr_register_datasets",
    "codec": "dtr_register_codecs",
    "feature_extractor": "dtr_register_feature_extractors",
    "process": "dtr_register_processes",  # flow: diffusion processes (gaussian, flow_matching)
    "tracker": "dtr_register_trackers",  # experiment trackers (tensorboard, wandb, mlflow)
    "launcher": "dtr_register_launchers",  # slurm helper
    "state_dict_adapter": "dtr_register_state_dict_adapters",  # a backbone's weights in a foreign layout
    "ema": "dtr_register_ema",  # how the averaged weights follow the trained ones (constant, warmup, power)
    "timestep_sampler": "dtr_register_timestep_samplers",  # how training draws t (uniform, logit_normal, ...)
    "conditioner": "dtr_register_conditioners",  # frozen text encoders of text-to-image models (clip_text)
    "token_router": "dtr_register_token_routers",  # tokens that skip blocks in training (tread)
    "regularizer": "dtr_register_regularizers",  # auxiliary losses from frozen encoders (repa)
}


class PluginLoadWarning(UserWarning):
    """A plugin module could not be imported, or its registration hook raised; the others still load."""


class _NoParams(BaseModel):
    model_config = {"extra": "forbid"}


@dataclass(frozen=True)
class PluginInfo:
    """One registered factory and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel]
    description: str
    plugin: str  # the module that registered it
    distribution: str | None
    version: str | None

    def validate(self, params: dict[str, Any], *, where: str = "", section_keys: Sequence[str] = ()) -> BaseModel:
        """Validate ``params`` against the plugin's model; errors name the key and what is allowed (the
        plugin's params and ``section_keys``, the section's own keys such as ``name`` and ``routing.site``)."""
        return validate_params(self.params, params, where, section_keys)

    @property
    def origin(self) -> str:
        """``plugin 'module' (distribution NAME)``, for error messages."""
        return f"plugin '{self.plugin}' (distribution {self.distribution or 'unknown'})"

    def build(self, **params: Any) -> Any:
        """Call the factory with validated params. A factory that raises anything but a :class:`UserError`
        (a bug in the plugin) is one :class:`PluginError` line naming the plugin and its distribution."""
        validated = self.validate(params, where=f"{self.kind} '{self.name}'")
        try:
            return self.factory(**validated.model_dump())
        except UserError:
            raise
        except Exception as exc:
            if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
                raise
            raise PluginError(f"{self.kind} '{self.name}' of {self.origin} failed to build: {first_line(exc)} "
                              f"(a bug in the plugin; --debug shows the traceback)") from exc

    def as_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "name": self.name, "distribution": self.distribution,
                "version": self.version, "description": self.description, "plugin": self.plugin}


def parse_params(model: type[BaseModel], params: dict[str, Any], where: str = "") -> Any:
    """``model.model_validate(params)``; a mistake is a one-line :class:`ConfigError` naming the key.

    Plugin constructors call it so that their defaults live only in their params model."""
    return validate_params(model, params, where)


#: pydantic error types of a value that only lax mode turns into a number or a boolean
_LAX_ONLY = {"int_type": "an integer", "float_type": "a number", "bool_type": "a boolean"}


M = TypeVar("M", bound=BaseModel)

_YAML_TYPE = {bool: "a boolean", int: "an integer", float: "a number"}


def yaml_text(value: bool | int | float) -> str:
    """How ``value`` is written in YAML (``true``, ``12``, ``0.5``), for messages."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def validate_params(model: type[M], params: Any, where: str = "", section_keys: Sequence[str] = ()) -> M:
    """``model.model_validate(params)`` with strict numbers and booleans: ``true`` is not ``1``, ``"3"`` is
    not ``3`` and ``1`` is not ``true`` (an integer is still a float). Any mistake is one
    :class:`ConfigError` line naming the key, the value and what is allowed. NaN and infinity are
    refused in every float field (``routing.beta=nan``, ``routing.alpha=.inf``). ``section_keys``: keys of the
    enclosing section beside the params (``name``, ``site``), listed as allowed in an unknown-key line."""
    _refuse_nonfinite(model, params, where)
    try:  # strict first: ``num_experts: true`` must not reach a model validator as 1
        model.model_validate(params, strict=True)
    except ValidationError as exc:  # refuse here only what strict numbers/booleans refuse
        for err in exc.errors():
            if err["type"] in _LAX_ONLY and isinstance(err.get("input"), (bool, int, float, str)):
                if _nonfinite_text(err["input"]):
                    continue  # "nan": refused below as not finite
                key = ".".join(p for p in (where, ".".join(str(x) for x in err["loc"])) if p)
                hint = "; write true or false" if err["type"] == "bool_type" else ""
                raise ConfigError(f"{key}: expected {_LAX_ONLY[err['type']]}, got {err['input']!r} "
                                  f"({type(err['input']).__name__}){hint}") from None
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, prefix=where, section_keys=section_keys)) from None
    return validated


def _nonfinite_text(value: Any) -> bool:
    try:
        return isinstance(value, str) and not math.isfinite(float(value))
    except ValueError:
        return False


def _refuse_nonfinite(model: type[BaseModel], params: Any, where: str) -> None:
    """ConfigError for a NaN / infinite value (a float, or text such as ``nan`` or ``inf``) given to a
    float field of ``model`` (top-level fields)."""
    if not isinstance(params, dict):
        return
    for name, value in params.items():
        field = model.model_fields.get(str(name))
        if field is None or "float" not in str(field.annotation) or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(number):
            key = ".".join(p for p in (where, str(name)) if p)
            raise ConfigError(f"{key}: must be a finite number (got {value!r})")


def format_validation_error(exc: ValidationError, model: type[BaseModel] | None = None, prefix: str = "",
                            section_keys: Sequence[str] = ()) -> str:
    """The first error of a pydantic ValidationError as one line: key path, bad value, what is allowed
    (for an unknown top-level key: ``model``'s fields and ``section_keys``)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(p for p in (prefix, ".".join(loc)) if p)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        if len(loc) == 1:
            allowed = sorted({*allowed, *section_keys})
        msg = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    hidden = (err["type"] in ("missing", "extra_forbidden")
              or (err["type"] == "value_error" and repr(err.get("input")) in msg))
    shown = "" if hidden else f" (got {err.get('input')!r})"
    typed = err.get("input")
    if err["type"] == "string_type" and isinstance(typed, (bool, int, float)):
        text = yaml_text(typed)
        msg, shown = f"expected text, got {text} (read by YAML as {_YAML_TYPE[type(typed)]})", ""
        msg += f"; quote it to mean the text: {loc[-1] if loc else key}: '{text}'"
    elif err["type"] in ("int_parsing", "float_parsing") and isinstance(typed, str):
        wanted = "an integer" if err["type"] == "int_parsing" else "a number"
        msg, shown = f"expected {wanted}, got the text {typed!r}", ""
    more = f" [and {exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
    return f"{key}: {msg}{shown}{more}"


def _allowed_keys(model: type[BaseModel] | None, path: list[str]) -> list[str]:
    """The field names of the (possibly nested) model found by following ``path``."""
    for part in path:
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(model.model_fields) if model is not None else []


@dataclass
class PluginRegistry:
    """Every registered factory, by kind and name. Build one with :func:`build_registry`."""

    plugins: dict[tuple[str, str], PluginInfo] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self.plugins if k == kind)

    def get(self, kind: str, name: str) -> PluginInfo:
        try:
            return self.plugins[(kind, name)]
        except KeyError:
            known = ", ".join(self.names(kind)) or "none installed"
            raise PluginError(f"unknown {kind} '{name}' (known: {known})") from None

    def build(self, kind: str, name: str, **params: Any) -> Any:
        return self.get(kind, name).build(**params)

    def list(self) -> list[PluginInfo]:
        order = list(KINDS)
        return sorted(self.plugins.values(), key=lambda p: (order.index(p.kind), p.name))


def _distribution_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def build_registry(modules: Iterable[ModuleType | tuple[ModuleType, str | None, str | None]] | None = None,
                   *, entry_points: bool = True) -> PluginRegistry:
    """Discover plugins and collect their registrations.

    ``modules``: extra plugin modules (or ``(module, distribution, version)`` triples) registered
    besides the entry points; tests use it with ``entry_points=False`` to build a registry holding
    only the plugins they name.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    origin: dict[str, tuple[str | None, str | None]] = {}
    label: dict[str, str] = {}  # plugin name -> how warnings name it (its entry point)
    failures: list[str] = []

    def add(module: ModuleType, dist: str | None, version: str | None, where: str | None = None) -> None:
        name = module.__name__
        if pm.has_plugin(name):
            return
        pm.register(module, name=name)
        origin[name] = (dist, version)
        label[name] = f"{where or f'plugin module {name!r}'} from distribution '{dist or 'unknown'}'"

    if entry_points:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist, version = _distribution_of(ep)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not take the others down
                msg = (f"plugin entry point '{ep.name} = {ep.value}' from distribution "
                       f"'{dist or 'unknown'}' failed to import: {type(exc).__name__}: {exc}")
                failures.append(msg)
                warnings.warn(msg, PluginLoadWarning, stacklevel=2)
                continue
            add(module, dist, version, f"plugin entry point '{ep.name} = {ep.value}'")
    for item in modules or ():
        module, dist, version = item if isinstance(item, tuple) else (item, None, None)
        add(module, dist, version)

    registry = PluginRegistry(failures=failures)
    broken: set[str] = set()
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order (pluggy calls them in reverse)
            if impl.plugin_name in broken:
                continue
            dist, version = origin.get(impl.plugin_name, (None, None))
            try:
                impl.function(register=_registrar(registry, kind, impl.plugin_name, dist, version))
            except UserError:  # duplicate or nameless registrations: refused outright
                raise
            except Exception as exc:  # noqa: BLE001 - a broken third-party hook must not take the others down
                broken.add(impl.plugin_name)
                for key in [k for k, p in registry.plugins.items() if p.plugin == impl.plugin_name]:
                    del registry.plugins[key]  # nothing half-registered
                msg = (f"{label.get(impl.plugin_name, repr(impl.plugin_name))} failed to register "
                       f"({hook_name}): {first_line(exc)}")
                failures.append(msg)
                warnings.warn(msg, PluginLoadWarning, stacklevel=2)
    return registry


def _registrar(registry: PluginRegistry, kind: str, plugin: str, dist: str | None,
               version: str | None) -> Callable[..., None]:
    def register(name: str, factory: Callable[..., Any], params: type[BaseModel] | None = None,
                 description: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a {kind} without a name")
        existing = registry.plugins.get((kind, name))
        if existing is not None:
            raise PluginError(
                f"duplicate {kind} name '{name}': registered by plugin '{existing.plugin}' "
                f"(distribution {existing.distribution or 'unknown'}) and by plugin '{plugin}' "
                f"(distribution {dist or 'unknown'})")
        model = params or _NoParams
        summary = (description or (factory.__doc__ or "")).strip().splitlines()
        registry.plugins[(kind, name)] = PluginInfo(kind, name, factory, model, summary[0] if summary else "",
                                                    plugin, dist, version)
    return register


@functools.cache
def default_registry() -> PluginRegistry:
    """The registry of every installed plugin, built on first use (never at import time)."""
    return build_registry()


def list_plugins(registry: PluginRegistry | None = None) -> list[dict[str, str | None]]:
    """Every installed plugin: kind, name, distribution, version, description."""
    return [p.as_dict() for p in (registry or default_registry()).list()]


def build_strategy(name: str, params: Mapping[str, Any] | None = None, *,
                   registry: PluginRegistry | None = None) -> Any:
    """Build a routing strategy by name: ``build_strategy("dtr", {"alpha": 4.0, "beta": 0.8})``.

    ``params``: the strategy's parameters (its params model fills the rest). Raises :class:`PluginError` for
    an unknown name and :class:`ConfigError` (one line naming the key) for a bad parameter."""
    return (registry or default_registry()).build("strategy", name, **dict(params or {}))
