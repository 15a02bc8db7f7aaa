"""Benchmark registering a real scan to the MNI template: gpuprep, ANTsPy, elastix and SimpleITK on the same pair.

The pair. Fixed: the MNI152 2009a T1 at 1 mm (nilearn; skull-stripped, 197 x 233 x 189). Moving:
nibabel's ``tests/data/anatomical.nii``, a T1 of another person, 33 x 41 x 25 voxels of 2 mm
(LAS, int16). It is a 66 x 82 x 50 mm crop of the middle of the brain (ventricles, basal
ganglia, thalami): no background and no skull, so it has no brain mask to compare with the
template's (its Otsu foreground is the white matter, 68 % of it). The overlap measure is
therefore the Dice of three tissue classes, the scan's 3-class Otsu (CSF, GM, WM) against the
template's tissue labels, inside the warped field of view (FOV).

Methods and stages (each stage from scratch): gpuprep ``model="affine"`` / ``"deformable"``
(metric ``"mi"``); ANTsPy ``type_of_transform`` ``"Affine"`` / ``"SyN"``; elastix its default
affine map / the default affine then bspline maps (sample counts raised: see ``elastix_runner``);
SimpleITK Mattes MI affine (the settings of ``bench_registration.py``) / that affine then a cubic
B-spline (about 12 mm control spacing at the end, 3 levels, line-search gradient descent). The
affine stage runs from the header (the identity, for all) and from each method's own start
(centres of mass for gpuprep and ANTsPy, moments for SimpleITK; elastix's is the header); the
deformable stage from the header. Like ITK's metrics, gpuprep leaves out the samples that the
transform maps outside the scan (its field of view is about 3 % of the template's box).

Scoring, the same for all: each result becomes a map from every template voxel to a point of
the scan's world (RAS mm; ITK's LPS fields are converted), and the scan and its labels are
resampled through it by one common resampler (scipy, trilinear). Reported inside the template's
brain mask and the warped FOV: normalised mutual information (32 bins, the same bin edges for
all), soft tissue Dice (the scan's one-hot classes resampled trilinearly: nearest neighbour
would break ties at the grids' half-voxel offsets one way), the share of the warped FOV inside
the brain mask, the volume ratio (median det J, scan mm^3 per template mm^3), folding (% det J
<= 0; all, and at least 6 mm inside the FOV), the time, and ``own r``, the correlation between
the method's own resampling of the scan and the common one (a check of the conversion of its
transform). Baselines: the header alone and the centres of mass aligned.

Usage::

    python benchmarks/bench_registration_real.py                     # CPU, 2 threads, all peers found
    python benchmarks/bench_registration_real.py --peers elastix --stages affine
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import bench_registration as reg
import numpy as np
import torch
from _common import machine_line, mni_t1_and_tissue

EDGE = 3  # scan voxels (6 mm): "interior" folding leaves out this margin of the scan's field of view
LPS3 = np.array([-1.0, -1.0, 1.0])[:, None, None, None]  # flips an LPS vector field [3, ...] to RAS and back


@dataclass
class Pair:
    """The template (fixed), its brain mask and tissue labels; the scan (moving) and its Otsu tissue classes."""

    fixed: np.ndarray
    fixed_affine: np.ndarray
    brain: np.ndarray
    tissue: np.ndarray
    moving: np.ndarray
    moving_affine: np.ndarray
    labels: np.ndarray
    edges: tuple[tuple[float, float], tuple[float, float]]


@dataclass
class Outcome:
    """Where each template voxel lands in the scan's world ``[3, D, H, W]`` (RAS mm), the time, the own resampling."""

    points: np.ndarray
    seconds: float
    own: np.ndarray | None = None


def parse_args() -> argparse.Namespace:
    """The command line: device, threads, stages, starts, peers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", default="affine,deformable", help="comma-separated: affine, deformable")
    parser.add_argument("--start", default="header,default",
                        help="affine stage, comma-separated: header (the identity, for all), default (each "
                        "method's own start); the deformable stage starts from the header")
    parser.add_argument("--peers", default="simpleitk,ants,elastix",
                        help="comma-separated; those not installed are left out")
    return parser.parse_args()


def load_pair() -> Pair:
    """The template at 1 mm with nilearn's brain mask on its grid, and nibabel's ``anatomical.nii`` as float32."""
    import nibabel
    from nilearn import datasets, image
    from skimage.filters import threshold_multiotsu

    t1, tissue, affine = mni_t1_and_tissue(1)
    mask = image.resample_img(datasets.load_mni152_brain_mask(resolution=1), target_affine=affine,
                              target_shape=t1.shape, interpolation="nearest")
    brain = np.asarray(mask.dataobj) > 0
    scan = nibabel.load(os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii"))
    moving = scan.get_fdata(dtype=np.float32)
    labels = (np.digitize(moving, threshold_multiotsu(moving, 3)) + 1).astype(np.uint8)  # 1 CSF, 2 GM, 3 WM
    edges = (tuple(np.percentile(t1[brain], [0.5, 99.5])), tuple(np.percentile(moving, [0.5, 99.5])))
    return Pair(np.maximum(t1, 0).astype(np.float32), affine, brain, tissue, moving, scan.affine, labels, edges)


def template_world(pair: Pair) -> np.ndarray:
    """The RAS mm position of every template voxel ``[3, D, H, W]``."""
    voxels = np.indices(pair.fixed.shape, dtype=np.float64)
    return apply_matrix(pair.fixed_affine, voxels)


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix`` (4x4) applied to points ``[3, ...]``."""
    return np.einsum("ij,j...->i...", matrix[:3, :3], points) + matrix[:3, 3].reshape(3, *[1] * (points.ndim - 1))


def from_lps_field(world: np.ndarray, field_zyx: np.ndarray) -> np.ndarray:
    """The map of an ITK displacement field ``[z, y, x, 3]`` (LPS mm, on the template grid) as RAS points."""
    return world + LPS3 * field_zyx.transpose(3, 2, 1, 0)


def mutual_information(a: np.ndarray, b: np.ndarray, edges, bins: int = 32) -> tuple[float, float]:
    """Mutual information (nats) and normalised MI ``(H(a) + H(b)) / H(a, b)`` of two samples, fixed bin edges."""
    def index(values, lo_hi):  # the bin of each value
        lo, hi = lo_hi
        return np.clip(((values - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)

    joint = np.bincount(index(a, edges[0]) * bins + index(b, edges[1]), minlength=bins * bins) / len(a)
    joint = joint.reshape(bins, bins)

    def entropy(p):  # in nats
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    ha, hb, hab = entropy(joint.sum(1)), entropy(joint.sum(0)), entropy(joint)
    return ha + hb - hab, (ha + hb) / hab


def score(pair: Pair, outcome: Outcome) -> dict:
    """The common measurements of one map (see the module's docstring)."""
    from scipy.ndimage import map_coordinates

    coords = apply_matrix(np.linalg.inv(pair.moving_affine), outcome.points)
    limit = np.array(pair.moving.shape, dtype=np.float64).reshape(3, 1, 1, 1) - 1
    fov = np.all((coords >= 0) & (coords <= limit), axis=0)
    inside = coords[:, fov]
    warped = map_coordinates(pair.moving, inside, order=1)
    in_brain = pair.brain[fov]
    mi, nmi = mutual_information(pair.fixed[fov][in_brain], warped[in_brain], pair.edges)
    truth = pair.tissue[fov]
    dice = []
    for k in (1, 2, 3):  # soft Dice: the scan's class k resampled trilinearly, so no ties at half-voxel offsets
        share = map_coordinates((pair.labels == k).astype(np.float32), inside, order=1)
        dice.append(2 * float(share[truth == k].sum()) / max(float(share.sum()) + np.sum(truth == k), 1.0))
    region = fov & pair.brain
    det = jacobian_determinant(outcome.points, region, pair.fixed_affine)
    interior = np.all((coords >= EDGE) & (coords <= limit - EDGE), axis=0)[region]
    own = np.nan
    if outcome.own is not None:
        own = float(np.corrcoef(outcome.own[fov][in_brain], warped[in_brain])[0, 1])
    return {"mi": mi, "nmi": nmi, "dice": dice, "in_brain": 100 * in_brain.mean(), "fov_cm3": fov.sum() / 1000,
            "volume": float(np.median(det)), "folding": 100 * float(np.mean(det <= 0)), "own": own,
            "folding_interior": 100 * float(np.mean(det[interior] <= 0)) if interior.any() else np.nan,
            "seconds": outcome.seconds}


def jacobian_determinant(points: np.ndarray, region: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """det of the map's Jacobian (scan mm^3 per template mm^3) at the voxels of ``region``."""
    where = np.argwhere(region)
    lo, hi = np.maximum(where.min(0) - 1, 0), where.max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grads = np.stack([np.stack(np.gradient(points[(c, *box)]), axis=0) for c in range(3)])  # [3 out, 3 voxel axes]
    jacobian = np.moveaxis(grads, (0, 1), (-2, -1))[region[box]]
    return np.linalg.det(jacobian) / np.linalg.det(affine[:3, :3])


def baselines(pair: Pair) -> dict[str, Outcome]:
    """The header alone (identity) and the centres of mass (of the intensities) aligned by a translation."""
    world = template_world(pair)

    def centre(volume, affine):
        weights = np.maximum(volume, 0).astype(np.float64)
        voxel = np.array([(np.indices(volume.shape)[i] * weights).sum() for i in range(3)]) / weights.sum()
        return affine[:3, :3] @ voxel + affine[:3, 3]

    shift = centre(pair.moving, pair.moving_affine) - centre(pair.fixed, pair.fixed_affine)
    return {"header": Outcome(world, 0.0), "centres of mass": Outcome(world + shift[:, None, None, None], 0.0)}


def gpuprep_runner(device: str) -> Callable[[Pair, str, str], Outcome]:
    """gpuprep: ``gp.register(model=stage, metric="mi")``; its own resampling is ``sample_world`` of its map."""
    def run(pair: Pair, stage: str, start_at: str) -> Outcome:
        import gpuprep as gp
        from gpuprep.functional.transform_models import sample_world

        fixed = torch.from_numpy(pair.fixed)[None].to(device)
        moving = torch.from_numpy(pair.moving)[None].to(device)
        start = time.perf_counter()
        result = gp.register(fixed, moving, model=stage, metric="mi", fixed_affine=pair.fixed_affine,
                             moving_affine=pair.moving_affine, initial=np.eye(4) if start_at == "header" else None)
        seconds = time.perf_counter() - start
        world = template_world(pair)
        if result.displacement is not None:
            world = world + result.displacement.cpu().double().numpy()
        points = apply_matrix(result.matrix, world)
        to_voxel = torch.from_numpy(np.linalg.inv(pair.moving_affine))[None].to(device)
        flat = torch.from_numpy(points.reshape(3, -1).T.astype(np.float32))[None].to(device)
        own = sample_world(moving[None], to_voxel.float(), flat)[0, 0].reshape(pair.fixed.shape).cpu().numpy()
        return Outcome(points, seconds, own)
    return run


def ants_runner(pair: Pair, stage: str, start_at: str) -> Outcome:
    """ANTsPy ``"Affine"`` or ``"SyN"``; the map is its transforms composed into one LPS field on the template grid."""
    import ants

    fixed, moving = reg.ants_image(pair.fixed, pair.fixed_affine), reg.ants_image(pair.moving, pair.moving_affine)
    start = time.perf_counter()
    result = ants.registration(fixed, moving, type_of_transform="Affine" if stage == "affine" else "SyN",
                               initial_transform="Identity" if start_at == "header" else None)
    seconds = time.perf_counter() - start
    own = ants.apply_transforms(fixed, moving, result["fwdtransforms"], interpolator="linear").numpy()
    field = reg.ants_lps_field(fixed, moving, result["fwdtransforms"])
    return Outcome(from_lps_field(template_world(pair), field), seconds, own)


def elastix_runner(pair: Pair, stage: str, start_at: str) -> Outcome:
    """elastix (itk-elastix): the default affine map, then the default bspline map for the deformable stage.

    elastix starts from the header (identity) by default, whatever ``start_at`` says. Its defaults
    stop with "too many samples map outside moving image buffer" (only about 3 % of the template's
    box lies in the scan's field of view), hence RequiredRatioOfValidSamples 0.01 (default 0.25)
    and NumberOfSpatialSamples 65536 for the affine map (default 2048: about 2,000 valid samples
    remain) and 8192 for the bspline map (65536 took over 15 minutes on 2 shared cores; with 2048
    it stops on too few valid samples). Its result image is written with linear interpolation.
    """
    import itk

    fixed, moving = reg.itk_image(pair.fixed, pair.fixed_affine), reg.itk_image(pair.moving, pair.moving_affine)
    parameters = itk.ParameterObject.New()
    for name in ("affine", "bspline") if stage == "deformable" else ("affine",):
        parameter_map = parameters.GetDefaultParameterMap(name)
        parameter_map["RequiredRatioOfValidSamples"] = ["0.01"]
        parameter_map["NumberOfSpatialSamples"] = ["65536" if name == "affine" else "8192"]
        parameter_map["FinalBSplineInterpolationOrder"] = ["1"]
        parameters.AddParameterMap(parameter_map)
    start = time.perf_counter()
    warped, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters,
                                                     log_to_console=False)
    seconds = time.perf_counter() - start
    field = reg.elastix_lps_field(moving, result)
    own = itk.array_from_image(warped).transpose(2, 1, 0)
    return Outcome(from_lps_field(template_world(pair), field), seconds, own)


def simpleitk_runner(pair: Pair, stage: str, start_at: str) -> Outcome:
    """SimpleITK Mattes MI: the affine of ``bench_registration.py``, then (deformable) a cubic B-spline stage."""
    import SimpleITK as sitk

    fixed, moving = reg.to_sitk(pair.fixed, pair.fixed_affine), reg.to_sitk(pair.moving, pair.moving_affine)
    start = time.perf_counter()
    transform = _sitk_affine(fixed, moving, start_at)
    if stage == "deformable":
        transform = sitk.CompositeTransform([transform, _sitk_bspline(fixed, moving, transform)])
    seconds = time.perf_counter() - start
    own = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
    world = template_world(pair)
    if stage == "affine":
        return Outcome(apply_matrix(reg.lps_transform_to_ras(transform), world), seconds, own)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                              fixed.GetSpacing(), fixed.GetDirection())
    return Outcome(from_lps_field(world, sitk.GetArrayFromImage(field)), seconds, own)


def _sitk_method(sampling: float):
    """A Mattes MI (32 bins) registration method, random sampling, linear, 3 levels (shrink 4/2/1, sigma 2/1/0)."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _sitk_affine(fixed, moving, start_at: str):
    """The affine stage: moments initialiser (or the identity), regular-step gradient descent as bench_registration."""
    import SimpleITK as sitk

    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    if start_at == "header":
        initial = sitk.AffineTransform(3)
        initial.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    method = _sitk_method(0.05)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=200,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def _sitk_bspline(fixed, moving, affine):
    """The B-spline stage after ``affine``: mesh refined 1, 2, 4 times to about 12 mm, line-search gradient descent.

    As SimpleITK's multi-resolution B-spline example (L-BFGS-B stops at the second level: its
    scales keep the first level's size), with Mattes MI and 1 % random samples (5 % took 9 minutes).
    """
    import SimpleITK as sitk

    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = np.maximum(np.round(extent / 48.0), 1).astype(int).tolist()
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    method = _sitk_method(0.01)
    method.SetOptimizerAsGradientDescentLineSearch(5.0, 100, convergenceMinimumValue=1e-4, convergenceWindowSize=5)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransformAsBSpline(bspline, inPlace=True, scaleFactors=[1, 2, 4])
    return method.Execute(fixed, moving)


RUNNERS = {"SimpleITK": simpleitk_runner, "ANTsPy": ants_runner, "elastix": elastix_runner}
START_NAMES = {("default", "gpuprep"): "centres of mass", ("default", "ANTsPy"): "centres of mass",
               ("default", "SimpleITK"): "moments (centres)"}
STAGE_NAMES = {"gpuprep": ("affine", "deformable (SVF)"), "ANTsPy": ("Affine", "SyN"),
               "elastix": ("affine", "affine + bspline"), "SimpleITK": ("affine", "affine + BSpline")}


def warm_up(device: str) -> None:
    """One tiny deformable registration, so that gpuprep's first timing has no start-up cost in it."""
    import gpuprep as gp

    small = torch.rand(1, 24, 24, 24, device=device)
    gp.register(small, small, model="deformable", iterations=(2, 2, 2), deformable_iterations=(2, 2))


def row(stage: str, start_at: str, name: str, result: dict) -> str:
    """One markdown row of the table."""
    dice = " / ".join(f"{d:.3f}" for d in result["dice"])
    return (f"| {stage} | {start_at} | {name} | {result['nmi']:.4f} | {result['mi']:.4f} | {dice} | "
            f"{result['in_brain']:.1f} | {result['fov_cm3']:.0f} | {result['volume']:.3f} | {result['folding']:.3f} / "
            f"{result['folding_interior']:.3f} | "
            f"{result['own']:.4f} | {result['seconds']:.1f} |")


def main() -> None:
    """Load the pair, score the baselines, then run and score every method and stage."""
    args = parse_args()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    chosen = reg.peers([p.strip().lower() for p in args.peers.split(",")])
    methods = {"gpuprep": gpuprep_runner(args.device), **{name: RUNNERS[name] for name in chosen}}
    pair = load_pair()
    print(f"# Registration of a real scan to MNI152 2009a (1 mm), {machine_line()}, device {args.device}\n")
    print("| stage | start | method | NMI | MI nats | Dice CSF / GM / WM | FOV in brain % | FOV cm3 | vol. ratio | "
          "folding % all / interior | own r | time s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, outcome in baselines(pair).items():
        print(row("before", name, "-", score(pair, outcome)), flush=True)
    warm_up(args.device)
    start = time.perf_counter()
    for stage in [s.strip() for s in args.stages.split(",")]:
        for start_at in [s.strip() for s in args.start.split(",")] if stage == "affine" else ["header"]:
            for name, method in methods.items():
                if start_at == "default" and name == "elastix":
                    continue  # its default start is the header: the same run as the row with start "header"
                label = STAGE_NAMES[name][stage == "deformable"]
                outcome = method(pair, stage, start_at)
                print(row(label, START_NAMES.get((start_at, name), start_at), name, score(pair, outcome)),
                      flush=True)
    print(f"\nTotal time of the registrations and their scoring: {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
