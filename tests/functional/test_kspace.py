"""K-space artefacts: the centred FFT and ghosting."""

from __future__ import annotations

import torch


def test_ghosting_restore_band_and_identity():
    x = torch.rand(1, 1, 16, 8, 8)
    from gpuprep.functional.kspace import centered_fft, ghosting

    y = ghosting(x, [1], [0], [1.0], [0.5])  # every plane zeroed except the central 8 of 16: [4, 12)
    k = centered_fft(y)[0, 0].abs().sum(dim=(1, 2))
    # Taking the real part mirrors plane 4 (frequency -4) onto plane 12 (+4), as in TorchIO.
    assert (k[:4] < 1e-3).all() and (k[13:] < 1e-3).all() and (k[4:13] > 1e-2).all()
    assert torch.equal(ghosting(x, [0], [0], [1.0], [0.5]), x)
    assert torch.equal(ghosting(x, [3], [1], [0.0], [None]), x)
