"""The transform contract every gpuprep transform follows.

A transform is constructed with ``keys`` (the image keys it works on), ``allow_missing_keys``
and its own options, validated at construction. Calling it on a sample ``[C, D, H, W]`` or a
batch ``[B, C, D, H, W]`` returns a **new** dict; the input is never mutated.

Internally every call works on a batch (a single sample is viewed as a batch of one, without a
copy) in two steps, as in Kornia and TorchIO 2:

1. :meth:`Transform.make_params` decides the parameters, one JSON-friendly dict per sample
   (drawn at random, or derived from the metadata, e.g. the axis permutation of
   :class:`Orientation`);
2. :meth:`Transform.apply_params` applies them: a pure function of data and parameters.

The base class then appends one record per sample to the history:
``{"name": class name, "keys": [...], "config": constructor arguments, "params": {...}}``.
Because the record holds both the configuration and the parameters, :func:`replay` can repeat
the exact operation later, and :func:`invert` can undo the invertible ones from it.

Subclasses register themselves by class name, so a pipeline saved as YAML can be rebuilt.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import REPR_LIMIT, ConfigError, MissingKeyError, TransformError, short_repr
from ..foreign import adopt_foreign, sync_monai_meta_dicts
from ..lazy_api import load_api
from ..records import make_record, to_json
from ..sample import HISTORY_KEY, IMAGE, collate, decollate, dtype_kind, get_kind, is_batch, meta_key

#: Every concrete transform class, by name (filled in by ``Transform.__init_subclass__``).
REGISTRY: dict[str, type[Transform]] = {}


class Transform:
    """Base class of dictionary transforms.

    Parameters
    ----------
    keys:
        One key or a sequence of keys of the sample to transform.
    allow_missing_keys:
        If False (default) a key missing from the sample raises
        :class:`~gpuprep.errors.MissingKeyError`; if True it is skipped.

    Example
    -------
    A subclass implements ``make_params`` and ``apply_params``::

        class Negate(Transform):
            def apply_params(self, batch, keys, params):
                return {**batch, **{k: -batch[k] for k in keys}}
    """

    #: Whether :func:`gpuprep.invert` can undo the transform from its records (the contract test
    #: checks it for every transform that claims it); only spatial transforms need undoing.
    invertible: ClassVar[bool] = False
    #: Whether the transform changes the voxel grid (and so the affine).
    spatial: ClassVar[bool] = False
    #: The constructor arguments of the outermost ``__init__`` call (see :meth:`get_config`).
    _init_args: dict[str, Any]

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not abstract and not cls.__name__.startswith("_"):
            REGISTRY[cls.__name__] = cls
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _recording_init(init)  # type: ignore[method-assign]  # records the arguments

    def __init__(self, keys: str | Sequence[str], allow_missing_keys: bool = False) -> None:
        self.keys = _validate_keys(keys, type(self).__name__)
        self.allow_missing_keys = bool(allow_missing_keys)

    # -- the two steps a subclass implements ------------------------------------------------

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        """Return one JSON-friendly parameter dict per sample of ``batch``.

        The default suits transforms without parameters.
        """
        return [{} for _ in range(_batch_len(batch, keys))]

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        """Apply ``params`` to ``batch`` (a shallow copy the method may assign into) and return it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement apply_params")

    # -- calling ---------------------------------------------------------------------------

    def __call__(self, data: Mapping) -> dict:
        """Transform a sample or a batch and return a new dict with the history extended."""
        batch, single, keys = self._prepare(data)
        if not keys:
            return dict(data)
        params = self.make_params(batch, keys)
        out = self.apply_params(batch, keys, params)
        out = self._record(out, keys, params)
        return sync_monai_meta_dicts(decollate(out)[0] if single else out)

    def replay(self, data: Mapping, params: Sequence[dict], extras: Sequence[dict] | None = None) -> dict:
        """Apply recorded ``params`` (one dict per sample) instead of making new ones.

        ``extras`` (one dict per sample) are the recorded records' other fields (such as a random
        step's ``"stream"``), copied into the new records so the replayed history equals the original.
        """
        batch, single, keys = self._prepare(data)
        params = list(params)
        if len(params) != _batch_len(batch, keys):
            raise TransformError(
                f"{type(self).__name__}.replay: got {len(params)} parameter sets for "
                f"{_batch_len(batch, keys)} samples"
            )
        extras = [{} for _ in params] if extras is None else extras
        out = self._record(self.apply_params(batch, keys, params), keys, params, extras)
        return sync_monai_meta_dicts(decollate(out)[0] if single else out)

    def get_config(self) -> dict:
        """The constructor arguments, so that ``type(self)(**self.get_config())`` rebuilds it."""
        return dict(self._init_args)

    def fingerprint(self) -> dict:
        """Everything besides the sample that determines the output: a cache keys its entries on it.

        The JSON form of :meth:`get_config` by default. A transform holding state that its
        configuration does not pin down (weights read from a file at construction, a module
        passed in) adds a digest of that state, so a changed file gives a new key.

        Example
        -------
        >>> from gpuprep.transforms.spatial.flip import Flip
        >>> Flip("image", axes=0).fingerprint()["config"]["axes"]
        0
        """
        return {"name": type(self).__name__, "config": to_json(self.get_config())}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- helpers for subclasses ------------------------------------------------------------

    def is_single(self, data: Mapping, keys: list[str]) -> bool:
        """Tell whether ``data`` is one sample (True) or a batch (False), from its first key."""
        return not is_batch(data, keys[0])

    def _prepare(self, data: Mapping) -> tuple[dict, bool, list[str]]:
        if not isinstance(data, Mapping):
            raise TransformError(
                f"{type(self).__name__} expects a dict sample, got {type(data).__name__}"
            )
        keys = self._present_keys(data)
        if not keys:
            return dict(data), True, keys
        data = adopt_foreign(data, keys, type(self).__name__)
        single = self.is_single(data, keys)
        batch = collate([data]) if single else dict(data)
        return batch, single, keys

    def _present_keys(self, data: Mapping) -> list[str]:
        missing = [k for k in self.keys if k not in data]
        if missing and not self.allow_missing_keys:
            raise MissingKeyError(
                f"{type(self).__name__}: key(s) {missing} not found in the sample; "
                f"it has {sorted(str(k) for k in data)} (pass allow_missing_keys=True to skip)"
            )
        return [k for k in self.keys if k in data]

    def record_extras(self, size: int) -> list[dict]:
        """Per-sample fields added to the records of the call just made (none by default).

        Random transforms add the identity of the stream each sample drew from (``"stream"``).
        """
        return [{} for _ in range(size)]

    def _record(self, batch: dict, keys: list[str], params: list[dict], extras: Sequence[dict] | None = None) -> dict:
        config = to_json(self.get_config())
        extras = self.record_extras(len(params)) if extras is None else list(extras)
        histories = batch.get(HISTORY_KEY) or [[] for _ in params]
        batch[HISTORY_KEY] = [
            [*history, make_record(type(self).__name__, keys, config, p, **extra)]
            for history, p, extra in zip(histories, params, extras)
        ]
        return batch


def replace_meta(batch: dict, key: str, **updates: Any) -> None:
    """Set fields of ``batch[key]``'s metadata without mutating the dict the caller passed in."""
    batch[meta_key(key)] = {**batch.get(meta_key(key), {}), **updates}


def intensity_keys(batch: Mapping, keys: Sequence[str]) -> list[str]:
    """The keys among ``keys`` whose kind is ``"image"`` (intensities), whatever their dtype.

    Intensity transforms use this to leave label maps and masks alone: an int16 CT declared an
    image is normalised, a float label map is not (see :func:`gpuprep.get_kind`). A tensor without
    metadata follows the dtype rule.

    Example
    -------
    >>> import torch
    >>> from gpuprep.sample import make_sample
    >>> s = make_sample({"ct": torch.zeros(1, 2, 2, 2, dtype=torch.int16), "seg": torch.zeros(1, 2, 2, 2)},
    ...                 labels=["seg"])
    >>> intensity_keys(s, ["ct", "seg"])
    ['ct']
    """
    return [k for k in keys if key_kind(batch, k) == IMAGE]


def float_intensity_keys(batch: dict, keys: Sequence[str]) -> list[str]:
    """:func:`intensity_keys`, after turning the integer ones of ``batch`` into float32 (in place).

    ``batch`` is the working copy an ``apply_params`` receives: an int16 CT or MRI that an
    intensity transform touches becomes float32 (as in MONAI), so that, e.g., added noise or a
    z-score is not truncated. Label maps are left as they are.
    """
    targets = intensity_keys(batch, keys)
    for key in targets:
        if not batch[key].is_floating_point():
            batch[key] = batch[key].float()
    return targets


def key_kind(batch: Mapping, key: str) -> str:
    """The kind of ``batch[key]``: from its metadata (:func:`gpuprep.get_kind`), else the dtype rule."""
    return get_kind(batch, key) if meta_key(key) in batch else dtype_kind(batch[key])


def registered_transform(name: str) -> type[Transform] | None:
    """The transform class registered under ``name``, or ``None``.

    Classes register when their module is imported, and ``import gpuprep`` loads its modules
    only on first use (so that the command line starts fast): on a miss, the whole API (the
    transforms of ``gpuprep.models`` and ``gpuprep.data`` included) is loaded before answering.

    Example
    -------
    >>> registered_transform("Orientation").__name__
    'Orientation'
    """
    if name not in REGISTRY:
        load_api()  # the facade's loader (gpuprep/lazy_api.py): data's and models' transforms register
    return REGISTRY.get(name)


def build_transform(name: str, config: Mapping) -> Transform:
    """Rebuild a registered transform from its class name and constructor arguments.

    Example
    -------
    >>> build_transform("Orientation", {"keys": ["image"], "axcodes": "RAS"})
    Orientation(keys=['image'], axcodes='RAS', allow_missing_keys=False)
    """
    cls = registered_transform(name) if isinstance(name, str) else None
    if cls is None:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3) if isinstance(name, str) else []
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown transform {short_repr(name)}; {hint}the {len(REGISTRY)} known transforms are "
                          f"listed in docs/transforms.md (gpuprep.transforms.base.REGISTRY)")
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise ConfigError(
            f"cannot build {name}: its config must be a mapping of argument names, got {short_repr(config)}"
        )
    try:
        return cls(**dict(config))
    except TypeError as error:  # a missing or unknown argument
        raise ConfigError(
            f"cannot build {name} from config {short_repr(dict(config))}: {str(error)[:REPR_LIMIT]}"
        ) from None


def _recording_init(init):
    """Wrap ``__init__`` so the outermost call stores its arguments for ``get_config``.

    The arguments are recorded in the signature's order with their defaults filled in. A
    ``**options`` parameter stands for options forwarded to the parent's ``__init__`` (the next
    one in the method resolution order, as ``super()`` finds it): they are recorded after the
    positional-or-keyword parameters and before the keyword-only ones, in the parent's order and
    with the parent's defaults, so that ``RandGamma(keys, log_gamma, **options)`` records
    ``keys, log_gamma, p, same_on_batch, seed, allow_missing_keys`` as a signature that spelled
    them out would. The parent's parameters without a default (``keys``) are the subclass's to pass.
    """
    signature = inspect.signature(init)
    parameters = list(signature.parameters.values())[1:]
    own = [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    keyword_only = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    forwards_options = len(own) < len(parameters)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        if "_init_args" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = {name: bound.arguments[name] for name in own}
            if forwards_options:
                options = _forwarded_options(type(self), wrapped, own, kwargs)
                arguments = {**{k: v for k, v in arguments.items() if k not in keyword_only}, **options,
                             **{k: arguments[k] for k in keyword_only}}
            self._init_args = arguments
        init(self, *args, **kwargs)

    return wrapped


def _forwarded_options(cls: type, init, own: Sequence[str], given: Mapping[str, Any]) -> dict[str, Any]:
    """The options that ``init`` (an ``__init__`` in ``cls``'s MRO) forwards to its parent's ``__init__``.

    They are the parent's parameters with a default that ``init`` does not name itself (``own``),
    in the parent's order, each with its value in ``given`` (the call's keyword arguments) or the
    parent's default; a parent that forwards ``**options`` in turn adds its own parent's.
    """
    owners = [klass for klass in cls.__mro__ if "__init__" in klass.__dict__]
    parent_init = owners[[klass.__dict__["__init__"] for klass in owners].index(init) + 1].__dict__["__init__"]
    options: dict[str, Any] = {}
    for parameter in list(inspect.signature(parent_init).parameters.values())[1:]:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            options.update(_forwarded_options(cls, parent_init, [*own, *options], given))
        elif parameter.default is not inspect.Parameter.empty and parameter.name not in own:
            options[parameter.name] = given.get(parameter.name, parameter.default)
    return options


Transform.__init__ = _recording_init(Transform.__dict__["__init__"])  # type: ignore[method-assign]  # records the arguments


def _validate_keys(keys: str | Sequence[str], owner: str) -> list[str]:
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, Sequence) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f"{owner}: keys must be a non-empty string or list of strings, got {short_repr(keys)}")
    return list(keys)


def _batch_len(batch: Mapping, keys: list[str]) -> int:
    return len(batch[keys[0]])
