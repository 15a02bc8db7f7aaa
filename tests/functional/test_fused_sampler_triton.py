"""The fused Triton sampler against the torch path (``resample``, ``grid_sample`` on a built grid).

On CUDA (with Triton) these run on the GPU. Without a GPU, set ``GPUPREP_TRITON_INTERPRET=1`` (in an
environment with Triton installed) to run the same kernel on CPU tensors with Triton's interpreter
(``TRITON_INTERPRET=1``, set here before the module is imported); otherwise they are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

if os.environ.get("GPUPREP_TRITON_INTERPRET") == "1":
    os.environ["TRITON_INTERPRET"] = "1"

from gpuprep.functional import fused_sampler_triton as fst
from gpuprep.functional.resample import resample


def _device() -> str | None:
    if fst.triton is None:
        return None
    if torch.cuda.is_available() and not fst.interpreting():
        return "cuda"
    # The kernel object is interpreted only if TRITON_INTERPRET was set before the module's import.
    if fst.interpreting() and type(fst._sample_affine_kernel).__name__ == "InterpretedFunction":
        return "cpu"
    return None


DEVICE = _device()
needs_triton = pytest.mark.skipif(DEVICE is None, reason="needs CUDA and Triton, or GPUPREP_TRITON_INTERPRET=1")
IN_SHAPE = (12, 14, 10)
OUT_SHAPE = (13, 12, 11)


def _random_maps(rng, batch, in_shape=IN_SHAPE, out_shape=OUT_SHAPE) -> np.ndarray:
    """Per-sample rotations about the centres, with anisotropic scales, shears and shifts."""
    maps = np.tile(np.eye(4), (batch, 1, 1))
    for m in maps:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation = q * np.sign(np.diag(r))
        shear = np.eye(3) + np.triu(rng.uniform(-0.15, 0.15, (3, 3)), 1)
        m[:3, :3] = rotation @ np.diag(rng.uniform(0.8, 1.25, 3)) @ shear
        centre_in, centre_out = (np.array(in_shape) - 1) / 2, (np.array(out_shape) - 1) / 2
        m[:3, 3] = centre_in - m[:3, :3] @ centre_out + rng.uniform(-2, 2, 3)
    return maps


def _settled(maps, out_shape=OUT_SHAPE) -> torch.Tensor:
    """``[B, 1, D, H, W]``: voxels whose float64 source is 1e-4 voxels or more from every half-integer.

    Near a half-integer, float32 rounding may tip nearest neighbour, or the inside test (at -0.5
    and n - 0.5), either way; elsewhere both paths must agree exactly.
    """
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), -1).astype(np.float64)
    source = np.einsum("bij,dhwj->bdhwi", maps[:, :3, :3], grid) + maps[:, None, None, None, :3, 3]
    distance = np.abs(source - np.floor(source) - 0.5)
    return torch.from_numpy((distance > 1e-4).all(-1))[:, None]


def _images(rng, batch=3, channels=2, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(-1, 2, (batch, channels, *IN_SHAPE))).to(dtype).to(DEVICE)


def _labels(rng, dtype, batch=3, low=0, high=200) -> torch.Tensor:
    # Blocks of 2 voxels, so that labels change across many, but not all, voxel faces.
    coarse = rng.integers(low, high, (batch, 1, *(n // 2 + 1 for n in IN_SHAPE)))
    fine = coarse.repeat(2, 2).repeat(2, 3).repeat(2, 4)[:, :, :IN_SHAPE[0], :IN_SHAPE[1], :IN_SHAPE[2]]
    return torch.from_numpy(np.ascontiguousarray(fine)).to(dtype).to(DEVICE)


def _compare(out, reference, maps, atol):
    keep = _settled(maps).to(out.device).expand_as(out)
    assert keep.float().mean() > 0.99
    assert out.shape == reference.shape and out.dtype == reference.dtype and out.device == reference.device
    if atol == 0:
        assert torch.equal(out[keep], reference[keep])
    else:
        torch.testing.assert_close(out[keep], reference[keep], atol=atol, rtol=0)


@needs_triton
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("fill", [0.0, 0.5, "per-sample"])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_images_match_the_torch_path(mode, fill, padding_mode):
    """float32 images, random per-sample maps: within 1e-5 (the torch path pads by adding ``fill`` back)."""
    rng = np.random.default_rng(0)
    volume = _images(rng)
    maps = _random_maps(rng, 3)
    value = torch.from_numpy(rng.uniform(-3, 3, (3, 2))).float() if fill == "per-sample" else fill
    out = fst.sample_affine_triton(volume, maps, OUT_SHAPE, mode=mode, padding_mode=padding_mode, fill=value)
    reference = resample(volume, maps, OUT_SHAPE, mode, padding_mode=padding_mode, padding_value=value)
    _compare(out, reference, maps, atol=1e-5)
    if padding_mode == "zeros":  # the maps do reach outside the input
        assert (~_inside(maps)).any()


def _inside(maps) -> torch.Tensor:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in OUT_SHAPE], indexing="ij"), -1)
    source = np.einsum("bij,dhwj->bdhwi", maps[:, :3, :3], grid) + maps[:, None, None, None, :3, 3]
    return torch.from_numpy(((source >= -0.5) & (source <= np.array(IN_SHAPE) - 0.5)).all(-1))


@needs_triton
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_float64_and_float16_images(padding_mode):
    """float64 to 1e-10 (float64 coordinates); float16 against the float32 torch path, to float16 rounding."""
    rng = np.random.default_rng(1)
    maps = _random_maps(rng, 3)
    volume = _images(rng, dtype=torch.float64)
    out = fst.sample_affine_triton(volume, maps, OUT_SHAPE, mode="linear", padding_mode=padding_mode, fill=0.25)
    reference = resample(volume, maps, OUT_SHAPE, "linear", padding_mode=padding_mode, padding_value=0.25)
    _compare(out, reference, maps, atol=1e-10)
    half = volume.half()
    out = fst.sample_affine_triton(half, maps, OUT_SHAPE, mode="linear", padding_mode=padding_mode, fill=0.25)
    reference = resample(half.float(), maps, OUT_SHAPE, "linear", padding_mode=padding_mode, padding_value=0.25)
    assert out.dtype == torch.float16
    _compare(out.float(), reference, maps, atol=2e-3)


@needs_triton
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize(("dtype", "low", "high", "fill"), [(torch.uint8, 0, 200, 0), (torch.uint8, 0, 200, 7),
                                                            (torch.int16, -300, 300, -1), (torch.int32, 0, 5, 3)])
def test_labels_match_the_torch_path_exactly(dtype, low, high, fill, padding_mode):
    """Integer labels keep dtype and values: equal to the torch path away from exact rounding ties."""
    rng = np.random.default_rng(2)
    labels = _labels(rng, dtype, low=low, high=high)
    maps = _random_maps(rng, 3)
    out = fst.sample_affine_triton(labels, maps, OUT_SHAPE, mode="nearest", padding_mode=padding_mode, fill=fill)
    reference = resample(labels, maps, OUT_SHAPE, "nearest", padding_mode=padding_mode, padding_value=fill)
    _compare(out, reference, maps, atol=0)
    if padding_mode == "zeros":
        assert (out[:, 0][~_inside(maps).to(out.device)] == fill).all()


@needs_triton
@pytest.mark.parametrize(("mode", "dtype"), [("linear", torch.float32), ("nearest", torch.uint8)])
def test_batch_equals_singles(mode, dtype):
    """Each sample of a batch is what the kernel gives it alone (bit for bit), per-sample fill included."""
    rng = np.random.default_rng(3)
    volume = _images(rng, batch=4) if dtype.is_floating_point else _labels(rng, dtype, batch=4)
    maps = _random_maps(rng, 4)
    fill = torch.arange(4 * volume.shape[1], dtype=torch.float32).reshape(4, volume.shape[1], 1, 1, 1)
    out = fst.sample_affine_triton(volume, maps, OUT_SHAPE, mode=mode, padding_mode="zeros", fill=fill)
    for i in range(4):
        single = fst.sample_affine_triton(volume[i:i + 1], maps[i], OUT_SHAPE, mode=mode, padding_mode="zeros",
                                          fill=fill[i:i + 1])
        assert torch.equal(out[i:i + 1], single)


@needs_triton
def test_bool_masks_and_bad_arguments():
    rng = np.random.default_rng(4)
    maps = _random_maps(rng, 3)
    mask = _labels(rng, torch.uint8, high=2)
    out = fst.sample_affine_triton(mask.bool(), maps, OUT_SHAPE, mode="nearest", padding_mode="border")
    assert out.dtype == torch.bool
    assert torch.equal(out, fst.sample_affine_triton(mask, maps, OUT_SHAPE, mode="nearest",
                                                     padding_mode="border").bool())
    with pytest.raises(TypeError, match="nearest"):
        fst.sample_affine_triton(mask, maps, OUT_SHAPE, mode="linear", padding_mode="zeros")
    with pytest.raises(ValueError, match="mode"):
        fst.sample_affine_triton(mask, maps, OUT_SHAPE, mode="cubic", padding_mode="zeros")
    with pytest.raises(ValueError, match="maps"):
        fst.sample_affine_triton(mask, maps[:2], OUT_SHAPE, mode="nearest", padding_mode="zeros")


@needs_triton
@pytest.mark.parametrize("out_shape", [(1, 12, 9), (5, 12, 9)])
def test_output_axes_of_one_voxel_match_scipy(out_shape):
    """Against scipy (1e-10, float64), including an output axis of one voxel.

    The torch path reads such an axis half a voxel off (``_affine_grid`` puts its one sample at
    normalised 0, which ``normalized_theta`` maps to output voxel 0.5), so scipy is the reference.
    """
    import scipy.ndimage as ndi

    c, s = np.cos(0.4), np.sin(0.4)
    voxel_map = np.array([[c, -s, 0.0, 3.0], [s, c, 0.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    volume = np.random.default_rng(5).normal(size=IN_SHAPE)
    out = fst.sample_affine_triton(torch.from_numpy(volume)[None, None].to(DEVICE), voxel_map, out_shape,
                                   mode="linear", padding_mode="border")
    reference = ndi.affine_transform(volume, voxel_map, output_shape=out_shape, order=1, mode="nearest")
    np.testing.assert_allclose(out[0, 0].cpu().numpy(), reference, atol=1e-10)


@needs_triton
def test_float32_coordinates_are_as_accurate_as_float64():
    """A float32 image at 40^3 within 1e-6 of the float64 torch path (a plain float32 grid is ~1e-5 off)."""
    rng = np.random.default_rng(6)
    in_shape = out_shape = (40, 36, 30)
    maps = _random_maps(rng, 2, in_shape, out_shape)
    volume = torch.from_numpy(rng.uniform(-1, 2, (2, 1, *in_shape)))
    truth = resample(volume, maps, out_shape, "linear", padding_mode="border")
    out = fst.sample_affine_triton(volume.float().to(DEVICE), maps, out_shape, mode="linear", padding_mode="border")
    torch.testing.assert_close(out.cpu().double(), truth, atol=1e-6, rtol=0)


def test_split_maps_sum_back_to_the_maps():
    """``hi`` is on the 2**-QUANTUM grid and ``hi + lo`` is the map; float64 when asked or when out of reach."""
    maps = _random_maps(np.random.default_rng(7), 3)
    split = fst._split_maps(maps, OUT_SHAPE, wide=False)
    assert split.dtype == torch.float32
    hi, lo = split.double().numpy().reshape(3, 2, 3, 4).transpose(1, 0, 2, 3)
    assert np.array_equal(hi * 2**fst.QUANTUM, np.round(hi * 2**fst.QUANTUM))
    np.testing.assert_allclose(hi + lo, maps[:, :3], atol=2.0 ** -34, rtol=0)  # lo is float32
    assert np.abs(lo).max() <= 2.0 ** -(fst.QUANTUM + 1)
    assert fst._split_maps(maps, OUT_SHAPE, wide=True).dtype == torch.float64
    far = maps.copy()
    far[:, 0, 3] = 20000.0
    assert fst._split_maps(far, OUT_SHAPE, wide=False).dtype == torch.float64


def test_importing_gpuprep_imports_neither_this_module_nor_triton():
    code = ("import sys, torch; torch_did = 'triton' in sys.modules; import gpuprep, gpuprep.functional; "
            "assert 'gpuprep.functional.fused_sampler_triton' not in sys.modules; "
            "assert torch_did or 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TRITON_INTERPRET": "0"})


@pytest.mark.skipif(fst.triton is not None, reason="Triton is installed")
def test_without_triton_the_module_imports_and_the_sampler_says_why_not():
    with pytest.raises(ImportError, match="triton"):
        fst.sample_affine_triton(torch.zeros(1, 1, 2, 2, 2), np.eye(4), (2, 2, 2), mode="linear",
                                 padding_mode="zeros")


def _has_nvidia_backend() -> bool:
    return fst.triton is not None and "nvidia" in getattr(fst.triton.backends, "backends", {})


_COMPILE = """
import sys
from triton import compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gpuprep.functional import fused_sampler_triton as fst

element, linear, zeros = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
volume = "*" + element
signature = {"src_ptr": volume, "out_ptr": volume, "map_ptr": "*fp64" if element == "fp64" else "*fp32",
             "fill_ptr": volume, "channels": "i32"}
signature.update(dict.fromkeys(["in_d", "in_h", "in_w", "out_d", "out_h", "out_w"], "i32"))
signature.update(dict.fromkeys(["tol_d", "tol_h", "tol_w"], "fp32"))
signature.update(dict.fromkeys(["LINEAR", "ZEROS", "BLOCK"], "constexpr"))
source = ASTSource(fst._sample_affine_kernel, signature, constexprs={"LINEAR": linear, "ZEROS": zeros,
                                                                    "BLOCK": fst.BLOCK})
compiled = compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": True})
assert len(compiled.asm["cubin"]) > 1000
"""


@pytest.mark.skipif(not _has_nvidia_backend(), reason="needs Triton with its CUDA backend (ptxas)")
@pytest.mark.skipif(DEVICE == "cuda", reason="on CUDA the other tests compile and run the kernel")
@pytest.mark.parametrize(("element", "linear", "zeros"), [("fp32", 1, 1), ("fp16", 1, 0), ("fp64", 1, 1),
                                                          ("u8", 0, 1), ("i16", 0, 0)])
def test_kernel_compiles_to_an_sm90_binary_without_a_gpu(element, linear, zeros):
    """Triton's compiler (front end, LLVM, ptxas) builds the kernel for sm_90; no GPU is needed to compile.

    In a fresh process without ``TRITON_INTERPRET`` (under it, kernels are not compilable objects).
    """
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", _COMPILE, element, str(linear), str(zeros)], check=True, env=env)
