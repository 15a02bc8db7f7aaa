"""Benchmark rigid and affine registration: gpuprep against SimpleITK, ANTsPy and elastix, same inputs, same process.

Known transforms: the MNI152 2009a T1 at 1 mm (nilearn) is the fixed image; the moving image is
the same T1 (mono-modal) or a T2-like image made from the template's tissue fractions
(multi-modal: CSF bright, GM middle, WM dark, plus the skull-free background), resampled through
a known transform: rotations up to 15 degrees, translations up to 10 mm and, for affine, scales
of ±10 %. Each method gets the same pair and its own defaults for Mattes mutual information
(gpuprep: 3 levels, 60/40/20 iterations, 10,000 points per level; SimpleITK: 3 levels of
regular-step gradient descent, up to 200 iterations, 5 % random sampling, scales from physical
shift; ANTsPy: ``type_of_transform="Rigid"`` or ``"Affine"``; elastix: its default rigid or
affine parameter map). Reported: the largest and the
mean distance, over the brain, between where the recovered and the true transforms put each
voxel (mm), the rotation error (degrees) and the wall time.

Usage::

    python benchmarks/bench_registration.py                  # CPU, 2 threads, 2 seeds, all peers found
    python benchmarks/bench_registration.py --peers simpleitk --seeds 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import machine_line, mni_t1_and_tissue

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="pairs registered in one call for the batch timing")
    parser.add_argument("--peers", default="simpleitk,ants,elastix",
                        help="comma-separated; those not installed are left out")
    return parser.parse_args()


def known_transform(seed: int, model: str, centre: np.ndarray) -> np.ndarray:
    """Fixed world -> moving world (RAS mm): up to 15 degrees, 10 mm and, for affine, ±10 % scale."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    linear = Rotation.from_euler("xyz", rng.uniform(-15, 15, 3), degrees=True).as_matrix()
    if model == "affine":
        linear = linear @ np.diag(rng.uniform(0.9, 1.1, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre + rng.uniform(-10, 10, 3) - linear @ centre
    return matrix


def moving_image(image: np.ndarray, affine: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``image`` seen through ``matrix``: moving(y) = image(matrix^-1 y), on the same grid."""
    from gpuprep.functional.resample import resample

    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(matrix) @ affine
    out = resample(torch.from_numpy(image)[None, None], voxel_map[None], image.shape, mode="linear")
    return out[0, 0].numpy()


def t2_like(fractions: np.ndarray) -> np.ndarray:
    """A T2-like contrast from the tissue fractions (background, CSF, GM, WM)."""
    return np.tensordot(np.array([0.0, 1.0, 0.55, 0.3], np.float32), fractions, axes=1).astype(np.float32)


def errors(found: np.ndarray, truth: np.ndarray, points: np.ndarray) -> tuple[float, float, float]:
    """Largest and mean distance (mm) over ``points`` between the two transforms, and the rotation error (degrees)."""
    distance = np.linalg.norm(points @ (found - truth)[:3].T, axis=1)
    relative = found[:3, :3] @ np.linalg.inv(truth[:3, :3])
    u, _, vt = np.linalg.svd(relative)
    rotation = u @ vt  # the rotation part of the residual
    angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    return float(distance.max()), float(distance.mean()), float(angle)


def to_sitk(image: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(image.transpose(2, 1, 0)))
    lps = FLIP @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    out.SetSpacing(spacing.tolist())
    out.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    out.SetOrigin(lps[:3, 3].tolist())
    return out


def gpuprep_method(device: str) -> Callable:
    def run(fixed, moving, affine, model):
        import gpuprep as gp

        result = gp.register(torch.from_numpy(fixed)[None].to(device), torch.from_numpy(moving)[None].to(device),
                             model=model, metric="mi", fixed_affine=affine, moving_affine=affine)
        return result.matrix
    return run


def simpleitk_method(fixed, moving, affine, model):
    import SimpleITK as sitk

    fixed_image, moving_image_ = to_sitk(fixed, affine), to_sitk(moving, affine)
    initial = sitk.CenteredTransformInitializer(
        fixed_image, moving_image_, sitk.Euler3DTransform() if model == "rigid" else sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.05, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=200,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed_image, moving_image_)
    return lps_transform_to_ras(transform)


def lps_transform_to_ras(transform) -> np.ndarray:
    """The 4x4 RAS matrix of a SimpleITK/ITK transform (fixed -> moving points)."""
    return ras_matrix(transform.TransformPoint)


def ras_matrix(map_point: Callable) -> np.ndarray:
    """The 4x4 RAS matrix of an affine LPS point map (fixed -> moving), read off at four points."""
    points = np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]) * 50.0
    mapped = np.array([map_point(p.tolist()) for p in points])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:] - mapped[0]).T / 50.0
    return FLIP @ lps @ FLIP


def ants_method(fixed, moving, affine, model):
    import ants

    def to_ants(image):
        lps = FLIP @ affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        return ants.from_numpy(image, origin=lps[:3, 3].tolist(), spacing=spacing.tolist(),
                               direction=lps[:3, :3] / spacing)

    result = ants.registration(to_ants(fixed), to_ants(moving), type_of_transform="Rigid" if model == "rigid"
                               else "Affine", aff_metric="mattes")
    return ras_matrix(ants.read_transform(result["fwdtransforms"][0]).apply_to_point)


def elastix_method(fixed, moving, affine, model):
    import itk

    def to_itk(image):
        return itk.image_from_array(np.ascontiguousarray(image.transpose(2, 1, 0)).astype(np.float32))

    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("elastix wrapper here expects an axis-aligned grid")
    fixed_image, moving_image_ = to_itk(fixed), to_itk(moving)
    for image in (fixed_image, moving_image_):
        lps = FLIP @ affine
        image.SetSpacing(np.abs(np.diag(lps[:3, :3])).tolist())
        image.SetOrigin(lps[:3, 3].tolist())
        direction = np.diag(np.sign(np.diag(lps[:3, :3])))
        image.SetDirection(itk.matrix_from_array(direction))
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("rigid" if model == "rigid" else "affine"))
    _, result = itk.elastix_registration_method(fixed_image, moving_image_, parameter_object=parameters,
                                                log_to_console=False)
    values = [float(v) for v in result.GetParameterMap(0)["TransformParameters"]]
    centre = [float(v) for v in result.GetParameterMap(0)["CenterOfRotationPoint"]]
    import SimpleITK as sitk

    transform = sitk.Euler3DTransform() if model == "rigid" else sitk.AffineTransform(3)
    transform.SetCenter(centre)
    transform.SetParameters(values)
    return lps_transform_to_ras(transform)


def peers(names: list[str]) -> dict[str, Callable]:
    chosen: dict[str, Callable] = {}
    for name, module, method in (("SimpleITK", "SimpleITK", simpleitk_method), ("ANTsPy", "ants", ants_method),
                                 ("elastix", "itk", elastix_method)):
        if name.lower().replace("py", "") in [n.replace("py", "") for n in names]:
            try:
                __import__(module)
                chosen[name] = method
            except ImportError:
                print(f"({name} is not installed: left out)")
    return chosen


def main() -> None:
    args = parse_args()
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    methods = {"gpuprep": gpuprep_method(args.device), **peers([p.strip().lower() for p in args.peers.split(",")])}
    t1, tissue, affine = mni_t1_and_tissue(1)
    from gpuprep.models.mni import mni_tissue_fractions

    fractions = mni_tissue_fractions(1)[0].numpy()
    t1 = np.maximum(t1, 0.0).astype(np.float32)
    brain = np.argwhere(tissue > 0)[::20]
    points = np.c_[brain @ affine[:3, :3].T + affine[:3, 3], np.ones(len(brain))]
    centre = points[:, :3].mean(axis=0)
    print(f"# Registration, {machine_line()}, device {args.device}\n")
    gpuprep_method(args.device)(t1[::4, ::4, ::4].copy(), t1[::4, ::4, ::4].copy(), affine, "rigid")  # warm-up
    print("| model | contrast | seed | method | max error mm | mean error mm | rotation error deg | time s |")
    print("|---|---|---|---|---|---|---|---|")
    summary: dict[tuple[str, str], list[float]] = {}
    for model in ("rigid", "affine"):
        for contrast, source in (("T1 -> T1", t1), ("T1 -> T2-like", t2_like(fractions))):
            for seed in range(args.seeds):
                truth = known_transform(seed, model, centre)
                moving = moving_image(np.ascontiguousarray(source), affine, truth)
                for name, method in methods.items():
                    start = time.perf_counter()
                    found = method(t1, moving, affine, model)
                    seconds = time.perf_counter() - start
                    worst, mean, angle = errors(found, truth, points)
                    summary.setdefault((model, name), []).append(seconds)
                    print(f"| {model} | {contrast} | {seed} | {name} | {worst:.3f} | {mean:.3f} | {angle:.3f} | "
                          f"{seconds:.2f} |", flush=True)
    print("\nMedian time per registration:\n")
    for (model, name), times in summary.items():
        print(f"- {model}, {name}: {np.median(times):.2f} s")
    batch_timing(args, t1, affine, points)
    known_deformation(args, t1, tissue, affine)


def batch_timing(args: argparse.Namespace, t1: np.ndarray, affine: np.ndarray, points: np.ndarray) -> None:
    """``args.batch`` affine pairs (different known transforms) in one ``gp.register`` call, per pair."""
    import gpuprep as gp

    centre = points[:, :3].mean(axis=0)
    truths = [known_transform(seed, "affine", centre) for seed in range(args.batch)]
    moving = np.stack([moving_image(t1, affine, truth) for truth in truths])
    fixed = torch.from_numpy(np.stack([t1] * args.batch))[:, None].to(args.device)
    moving_t = torch.from_numpy(moving)[:, None].to(args.device)
    start = time.perf_counter()
    result = gp.register(fixed, moving_t, model="affine", metric="mi", fixed_affine=affine, moving_affine=affine)
    seconds = time.perf_counter() - start
    worst = max(errors(result.matrix[i], truths[i], points)[0] for i in range(args.batch))
    print(f"\nA batch of {args.batch} affine pairs in one call on {args.device}: {seconds:.2f} s "
          f"({seconds / args.batch:.2f} s per pair); worst error {worst:.3f} mm")


def known_deformation(args: argparse.Namespace, t1: np.ndarray, tissue: np.ndarray, affine: np.ndarray) -> None:
    """Deformable registration of the T1 warped by a known smooth field (up to 6 mm), at 1 mm: gpuprep and the peers.

    gpuprep ``gp.register(model="deformable", metric="mse")``, ANTsPy ``"SyNOnly"`` (identity start, Mattes MI) and
    elastix's default bspline map. Reported: the mean end-point error in the brain (mm), the Dice of the tissue labels
    carried through the found map then the true warp (1.0: within half a voxel everywhere), % det(J) <= 0, the time.
    """
    from scipy.ndimage import gaussian_filter

    from gpuprep.functional.velocity_field import warp_volume
    from gpuprep.functional.warp import invert_displacement

    chosen = peers([p.strip().lower() for p in args.peers.split(",")])
    methods = {"gpuprep": lambda fixed_, moving_, affine_: gpuprep_deformable(fixed_, moving_, affine_, args.device),
               **{name: run for name, run in (("ANTsPy", ants_syn), ("elastix", elastix_bspline)) if name in chosen}}
    print("\n## Known deformations (T1 -> T1; gpuprep MSE, ANTsPy SyNOnly and elastix bspline Mattes MI)\n")
    print("| seed | mean EPE before mm | mean EPE after mm | Dice CSF / GM / WM | folding % | time s | method |")
    print("|---|---|---|---|---|---|---|")
    fixed = torch.from_numpy(t1)[None, None].to(args.device)
    labels = torch.from_numpy(tissue)[None, None].float().to(args.device)
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        field = np.stack([gaussian_filter(rng.normal(size=t1.shape), 20.0) for _ in range(3)])
        truth = torch.from_numpy((field * 6.0 / np.abs(field).max()).astype(np.float32))[None].to(args.device)
        moving = warp_volume(fixed, truth)[0, 0].cpu().numpy()  # moving(x) = fixed(x + truth(x)): 1 mm voxels
        expected = invert_displacement(truth, iterations=20, stride=1)
        for name, method in methods.items():
            found, seconds = method(t1, moving, affine)
            before, epe, dice, folding = deformation_errors(found.to(args.device), truth, expected, labels)
            print(f"| {seed} | {before:.3f} | {epe:.3f} | {dice[0]:.3f} / {dice[1]:.3f} / {dice[2]:.3f} | "
                  f"{folding:.4f} | {seconds:.1f} | {name} |", flush=True)


def deformation_errors(found: torch.Tensor, truth: torch.Tensor, expected: torch.Tensor, labels: torch.Tensor):
    """Mean EPE before and after (mm, brain), tissue Dice through found then truth, % det(J) <= 0 (1 mm voxels)."""
    from gpuprep.functional.jacobian import folding_fraction, jacobian_determinant
    from gpuprep.functional.velocity_field import compose_displacements, warp_volume

    brain = labels[0, 0] > 0
    epe = (found - expected).norm(dim=1)[0][brain].mean().item()
    before = expected.norm(dim=1)[0][brain].mean().item()
    carried = warp_volume(labels, compose_displacements(truth, found), mode="nearest")[0, 0]
    dice = [2 * ((carried == k) & (labels[0, 0] == k)).sum().item()
            / ((carried == k).sum() + (labels[0, 0] == k).sum()).item() for k in (1, 2, 3)]
    return before, epe, dice, 100 * folding_fraction(jacobian_determinant(found)).item()


def gpuprep_deformable(fixed: np.ndarray, moving: np.ndarray, affine: np.ndarray, device: str):
    """gpuprep's deformable registration (MSE): the found map in voxels ``[1, 3, D, H, W]`` and the time."""
    import gpuprep as gp

    start = time.perf_counter()
    result = gp.register(torch.from_numpy(fixed)[None].to(device), torch.from_numpy(moving)[None].to(device),
                         model="deformable", metric="mse", fixed_affine=affine, moving_affine=affine)
    seconds = time.perf_counter() - start  # as the peers: the conversion to a voxel map for scoring is not timed
    return found_voxels(result, affine, fixed.shape), seconds


def ants_syn(fixed: np.ndarray, moving: np.ndarray, affine: np.ndarray):
    """ANTsPy ``SyNOnly`` (identity start): its forward warp as voxel displacements and the time."""
    import ants

    fixed_image, moving_image_ = ants_image(fixed, affine), ants_image(moving, affine)
    start = time.perf_counter()
    result = ants.registration(fixed_image, moving_image_, type_of_transform="SyNOnly")
    seconds = time.perf_counter() - start
    return lps_voxels(ants_lps_field(fixed_image, moving_image_, result["fwdtransforms"]), affine), seconds


def elastix_bspline(fixed: np.ndarray, moving: np.ndarray, affine: np.ndarray):
    """elastix with its default bspline map: its deformation field as voxel displacements and the time."""
    import itk

    fixed_image, moving_image_ = itk_image(fixed, affine), itk_image(moving, affine)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("bspline"))
    start = time.perf_counter()
    _, result = itk.elastix_registration_method(fixed_image, moving_image_, parameter_object=parameters,
                                                log_to_console=False)
    seconds = time.perf_counter() - start
    return lps_voxels(elastix_lps_field(moving_image_, result), affine), seconds


def ants_image(image: np.ndarray, affine: np.ndarray):
    """An ANTsPy image with the LPS geometry of a RAS ``affine``."""
    import ants

    lps = FLIP @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return ants.from_numpy(image, origin=lps[:3, 3].tolist(), spacing=spacing.tolist(), direction=lps[:3, :3] / spacing)


def itk_image(image: np.ndarray, affine: np.ndarray):
    """An ITK float image (for elastix) with the LPS geometry of a RAS ``affine``, any direction."""
    import itk

    out = itk.image_from_array(np.ascontiguousarray(image.transpose(2, 1, 0)).astype(np.float32))
    lps = FLIP @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    out.SetSpacing(spacing.tolist())
    out.SetOrigin(lps[:3, 3].tolist())
    out.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    return out


def ants_lps_field(fixed, moving, transforms: list[str]) -> np.ndarray:
    """ANTs transforms (fixed -> moving points) composed into one displacement field ``[z, y, x, 3]``, LPS mm."""
    import ants
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as folder:
        path = ants.apply_transforms(fixed, moving, transforms, compose=os.path.join(folder, "map"))
        return sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.float64)


def elastix_lps_field(moving, result) -> np.ndarray:
    """An elastix result as one displacement field ``[z, y, x, 3]``, LPS mm (transformix writes a file: a temp one)."""
    import itk

    with tempfile.TemporaryDirectory() as folder:
        field = itk.transformix_deformation_field(moving, result, output_directory=folder)
        return itk.array_from_image(field).astype(np.float64)


def lps_voxels(field_zyx: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    """An ITK displacement field ``[z, y, x, 3]`` (LPS mm) as voxel displacements ``[1, 3, D, H, W]`` of ``affine``."""
    ras = field_zyx.transpose(3, 2, 1, 0) * np.array([-1.0, -1.0, 1.0])[:, None, None, None]
    voxels = np.einsum("ij,j...->i...", np.linalg.inv(affine[:3, :3]), ras)
    return torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))[None]


def found_voxels(result, affine: np.ndarray, shape) -> torch.Tensor:
    """The found map ``x -> M (x + d(x))`` as a displacement in voxels ``[1, 3, D, H, W]`` (axis-aligned 1 mm grid)."""
    voxels = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    world = np.einsum("ij,j...->i...", affine[:3, :3], voxels) + affine[:3, 3, None, None, None]
    moved_points = world + result.displacement.cpu().double().numpy()
    mapped = np.einsum("ij,j...->i...", result.matrix[:3, :3], moved_points) + result.matrix[:3, 3, None, None, None]
    to_voxel = np.linalg.inv(affine)
    target = np.einsum("ij,j...->i...", to_voxel[:3, :3], mapped) + to_voxel[:3, 3, None, None, None]
    return torch.from_numpy((target - voxels).astype(np.float32))[None]


if __name__ == "__main__":
    main()
