"""A dataset's label space against the model's: checked before training, recorded in the run directory.

A dataset declares ``num_classes`` (labels are ``0..num_classes-1``; an unlabeled dataset has one class,
label 0) and, when it can name them, ``classes``: the name of each label in label order (``image_folder``:
its class folder names, sorted). A backbone's ``num_classes`` of ``None``, 0 or 1 means unconditional
(no labels reach the model); more means class-conditional with labels ``0..num_classes-1`` (a DiT
keeps label ``num_classes`` as the null class of classifier-free guidance, so an extra class in the data
would silently train as "no class").
"""
from __future__ import annotations

import warnings
from typing import Any, Protocol, runtime_checkable

from dtr_plugins.core.errors import ConfigError, PluginError

#: the name of the single class of an unlabeled dataset
UNLABELED = "(unlabeled)"


@runtime_checkable
class LabeledDataset(Protocol):
    """A dataset that declares how many labels its items carry."""

    num_classes: int


@runtime_checkable
class NamedClasses(Protocol):
    """A dataset that also names its labels: ``classes[i]`` is the name of label ``i``."""

    classes: list[str]


def is_conditional(num_classes: int | None) -> bool:
    """Does a backbone with this ``num_classes`` take labels? (``None``, 0 or 1: no.)"""
    return (num_classes or 0) > 1


def declares_labels(dataset: Any) -> bool:
    """Does ``dataset`` declare its label space (``num_classes``, an int >= 1)?"""
    return isinstance(dataset, LabeledDataset) and isinstance(dataset.num_classes, int) and dataset.num_classes >= 1


def class_names(dataset: Any) -> list[str]:
    """The names of the dataset's labels in label order (``"0".."N-1"`` when it does not name them).

    Raises :class:`PluginError` when the dataset declares no ``num_classes`` or names a different number.
    """
    if not declares_labels(dataset):
        raise PluginError(f"dataset {type(dataset).__name__} does not declare its label space: it needs an "
                          "attribute num_classes (an int >= 1; 1 for unlabeled data)")
    n = dataset.num_classes
    if isinstance(dataset, NamedClasses):
        names = [str(c) for c in dataset.classes]
        if len(names) != n:
            raise PluginError(f"dataset {type(dataset).__name__} names {len(names)} classes but declares "
                              f"num_classes={n}")
        return names
    return [str(i) for i in range(n)]


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_label_space(num_classes: int | None, dataset: Any, data_name: str = "data") -> None:
    """Refuse a conditional backbone whose ``num_classes`` differs from the dataset's class count.

    ``num_classes``: the built backbone's ``num_classes`` (``None``/0/1: unconditional). ``data_name``
    names the dataset plugin in messages (``cfg.dataset.name``).

    - conditional backbone: the counts must be equal, else :class:`ConfigError` (one line naming
      ``backbone.num_classes``, the dataset's count and the first class names); an unlabeled dataset
      (one class) is refused the same way;
    - unconditional backbone: labels never reach the model; with a labeled dataset (more than one class)
      a ``UserWarning`` says that its labels are ignored.

    Raises :class:`PluginError` when a conditional backbone meets a dataset that does not declare
    ``num_classes`` (an unconditional one needs no labels, so there it is not required).
    """
    if not is_conditional(num_classes):
        n = len(class_names(dataset)) if declares_labels(dataset) else 1
        if n > 1:
            warnings.warn(f"backbone.num_classes is {num_classes} (unconditional): the {n} classes of data "
                          f"'{data_name}' are ignored, every image trains without a label", UserWarning,
                          stacklevel=2)
        return
    names = class_names(dataset)
    n = len(names)
    if n == num_classes:
        return
    if n == 1:
        raise ConfigError(f"backbone.num_classes is {num_classes} (class-conditional) but data '{data_name}' "
                          "has no class labels (one class); use labeled data (image_folder: class_cond: true) "
                          "or backbone.num_classes: 1 for an unconditional model")
    raise ConfigError(f"backbone.num_classes is {num_classes} but data '{data_name}' has {n} classes "
                      f"({_listing(names)}); set backbone.num_classes: {n}, or 1 for an unconditional model")


def class_map(dataset: Any, num_classes: int | None) -> dict[str, Any]:
    """What ``<run_dir>/classes.json`` records: the dataset's label space and whether the model used it.

    ``num_classes``: the backbone's. Returns ``{"num_classes": N, "classes": [name of label 0, ...],
    "labels_used": bool}``; ``labels_used`` is false for an unconditional backbone (labels ignored),
    and then a dataset that declares no label space gives ``None`` for both. Raises :class:`PluginError`
    like :func:`class_names` otherwise.
    """
    if not is_conditional(num_classes) and not declares_labels(dataset):
        return {"num_classes": None, "classes": None, "labels_used": False}
    names = class_names(dataset)
    return {"num_classes": len(names), "classes": names, "labels_used": is_conditional(num_classes)}
