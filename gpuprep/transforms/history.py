"""Replaying a sample's (or a batch's) history of transform records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import TransformError
from ..records import to_json
from ..sample import HISTORY_KEY
from .base import build_transform
from .fusion import apply_fused

#: The fields every record has; any other field (``"stream"``, ``"fused"``) is copied on replay.
RECORD_FIELDS = ("name", "keys", "config", "params")


def replay(data: Mapping, history: Sequence) -> dict:
    """Apply the transforms of a recorded ``history`` to ``data`` with the recorded parameters.

    Random transforms repeat exactly the parameters they drew, and records that were resampled
    together (marked ``"fused"`` by :func:`~gpuprep.transforms.fusion.apply_fused`) are
    resampled together again, so replaying the history of a preprocessed sample on its input gives
    the same output, bit for bit on the same device, fused or not. The records ``data`` already
    carries (its own history is a prefix of ``history``, e.g. the ``LoadImage`` record of a loaded
    sample) are not applied again: replay continues from where ``data`` stands.

    Parameters
    ----------
    data:
        A single sample (``history`` is a list of records) or a batch (``history`` is a list of
        ``B`` such lists, one per sample, as :func:`gpuprep.get_history` returns for a batch).
        It may hold paths when ``history`` starts with ``LoadImage``.
    history:
        Records as stored by the transforms (see :func:`gpuprep.get_history`).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 5, 5, 5)})
    >>> out = gp.Compose([gp.Orientation("image", "LPS"), gp.RandAffine("image", rotate=10)], seed=0)(s)
    >>> torch.equal(gp.replay(s, gp.get_history(out))["image"], out["image"])
    True
    """
    histories = _per_sample(history)
    out = dict(data)
    position = _replayed_already(out.get(HISTORY_KEY), histories)
    length = len(histories[0])
    while position < length:
        _check_not_loaded_yet(out, histories[0], position)
        count = _run_length(histories, position)
        records = [[h[j] for h in histories] for j in range(position, position + count)]
        transforms = [build_transform(same[0]["name"], same[0].get("config") or {}) for same in records]
        recorded = [(same[0]["keys"], [r["params"] for r in same], [_extras(r) for r in same]) for same in records]
        if count > 1:
            out = apply_fused(transforms, out, recorded)
        else:
            out = transforms[0].replay(out, recorded[0][1], recorded[0][2])
        position += count
    return out


def _per_sample(history: Sequence) -> list[list[Mapping]]:
    """The history as one list of records per sample; every sample must have the same steps."""
    history = list(history)
    if not history or isinstance(history[0], Mapping):
        return [history]
    histories = [list(h) for h in history]
    steps = [[r.get("name") for r in h] for h in histories]
    if any(s != steps[0] for s in steps):
        raise TransformError("replay: the samples of this batch history went through different transforms; "
                             "replay them one by one (gp.decollate)")
    return histories


def _replayed_already(own, histories: list[list[Mapping]]) -> int:
    """How many records ``data`` already carries: the length of its history when it is a prefix of ``histories``."""
    if not own:
        return 0
    own = [own] if isinstance(own[0], Mapping) else own
    if len(own) != len(histories) or any(len(o) > len(h) for o, h in zip(own, histories)):
        return 0
    done = {len(o) for o in own}
    if len(done) != 1 or any(to_json(o) != to_json(h[: len(o)]) for o, h in zip(own, histories)):
        return 0
    return done.pop()


def _check_not_loaded_yet(data: Mapping, history: list[Mapping], position: int) -> None:
    """A ``LoadImage`` record reads files: refuse it clearly when its keys already hold tensors."""
    record = history[position]
    if record.get("name") != "LoadImage":
        return
    loaded = [key for key in record.get("keys", []) if isinstance(data.get(key), torch.Tensor)]
    if not loaded:
        return
    own = [r for r in (data.get(HISTORY_KEY) or []) if isinstance(r, Mapping) and r.get("name") == "LoadImage"]
    made = f"loaded with config {own[0].get('config')}" if own else "not loaded by a recorded LoadImage"
    raise TransformError(
        f"replay: record {position} (LoadImage) reads the files of {loaded}, which already hold tensors "
        f"{made}, not with the recorded config {record.get('config')}; replay on the source paths, "
        f"or on a sample loaded with the recorded config"
    )


def _run_length(histories: list[list[Mapping]], position: int) -> int:
    """How many records from ``position`` on were resampled together (1 when not fused)."""
    fused = histories[0][position].get("fused")
    if not fused:
        return 1
    index, count = fused.get("index"), fused.get("count")
    expected = [{"index": i, "count": count} for i in range(count)] if isinstance(count, int) else None
    found = [h.get("fused") for h in histories[0][position: position + (count or 0)]]
    if index != 0 or expected is None or found != expected:
        raise TransformError(
            f"replay: record {position} ({histories[0][position]['name']}) is marked fused {fused}, but the "
            f"records from there are marked {found}; a fused run must be replayed from its first record"
        )
    return count


def _extras(record: Mapping) -> dict:
    return {k: v for k, v in record.items() if k not in RECORD_FIELDS}
