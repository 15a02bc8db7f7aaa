"""Replaying and undoing a sample's history of transform records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .base import build_transform


def replay(data: Mapping, history: Sequence[Mapping]) -> dict:
    """Apply the transforms of a recorded ``history`` to ``data`` with the recorded parameters.

    Random transforms repeat exactly the parameters they drew, so replaying the history of a
    preprocessed sample on its input gives the same output.

    Parameters
    ----------
    data:
        A single sample (the history is a list of records).
    history:
        Records as stored by the transforms (see :func:`gpuprep.get_history`).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 3, 3, 3)})
    >>> out = gp.Orientation("image", "LPS")(s)
    >>> torch.equal(gp.replay(s, gp.get_history(out))["image"], out["image"])
    True
    """
    out = dict(data)
    for record in history:
        transform = build_transform(record["name"], record.get("config") or {})
        out = transform.replay(out, [record["params"]])
    return out
