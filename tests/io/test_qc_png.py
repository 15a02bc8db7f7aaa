"""QC PNGs people can read: overlay legends and orientation letters, montages through one world point."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

import gpuprep as gp
from gpuprep.io.montage import save_montage
from gpuprep.io.overlay import save_overlay
from gpuprep.io.qc_annotations import MARKER_COLOUR

ALPHA = 0.45
#: Stored flipped and permuted (voxel axes: right-to-left, inferior-to-superior, posterior-to-anterior),
#: so that a correct display has to reorient.
PERMUTED_AFFINE = np.array([[-2.0, 0, 0, 31.0], [0, 0, 2.0, -31.0], [0, 2.0, 0, -31.0], [0, 0, 0, 1]])


def _world_coordinates(shape, affine):
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _letter_mask(letter: str) -> np.ndarray:
    """The pixels of ``letter`` in Pillow's default font, drawn without anti-aliasing, cropped to its box."""
    image = Image.new("L", (40, 40))
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    draw.text((10, 10), letter, font=ImageFont.load_default(), fill=255)
    mask = np.asarray(image) > 0
    rows, columns = np.nonzero(mask)
    return mask[rows.min():rows.max() + 1, columns.min():columns.max() + 1]


def _find_letters(mask: np.ndarray, letter: str) -> list[tuple[float, float]]:
    """Centres (row, column) of the connected pixel groups of ``mask`` shaped exactly like ``letter``."""
    template = _letter_mask(letter)
    components, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    found = []
    for box in ndimage.find_objects(components):
        if mask[box].shape == template.shape and np.array_equal(mask[box], template):
            found.append(((box[0].start + box[0].stop - 1) / 2, (box[1].start + box[1].stop - 1) / 2))
    return found


def _asymmetric_labels():
    """A zero image and labels: 1 only in the left hemisphere (world x < 0), 2 only in the right one."""
    shape = (32, 32, 32)
    world = _world_coordinates(shape, PERMUTED_AFFINE)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[np.linalg.norm(world - [-14, 0, 0], axis=-1) < 9] = 1
    labels[np.linalg.norm(world - [14, 0, 0], axis=-1) < 6] = 2
    return torch.zeros(1, *shape), torch.from_numpy(labels)[None]


def _swatches(pixels: np.ndarray) -> list[tuple[int, int, tuple]]:
    """``(left, top, colour)`` of every filled square of one colour (8 pixels or more), left to right."""
    found = []
    values, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    colours = {tuple(int(v) for v in c) for c in values[counts >= 64]} - {(0, 0, 0), (255, 255, 255), MARKER_COLOUR}
    for colour in colours:
        exact = (pixels == colour).all(-1)
        for box in ndimage.find_objects(ndimage.label(exact)[0]):
            height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
            if height >= 8 and height == width and exact[box].all():
                found.append((box[1].start, box[0].start, colour))
    return sorted(found)


def test_overlay_legend_swatches_have_each_labels_colour(tmp_path):
    image, labels = _asymmetric_labels()
    names = {"0": "background", "1": "left blob", "2": "right blob", "3": "absent"}
    path = save_overlay(tmp_path / "qc.png", image, labels, torch.from_numpy(PERMUTED_AFFINE), names=names, alpha=ALPHA)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    marker_rows = np.nonzero((pixels == MARKER_COLOUR).all(-1))[0]
    swatches = _swatches(pixels)
    assert len(swatches) == 3  # labels 1, 2 and the named but absent 3, left to right; none for background
    assert len({colour for _, _, colour in swatches}) == 3
    assert all(top > marker_rows.max() for _, top, _ in swatches)  # the legend is below the views
    # Over the black image, the overlay draws a label as alpha * its colour: each present label's
    # swatch colour is the one drawn on it, the absent label's is drawn nowhere.
    for value, (_, _, colour) in zip((1, 2, 3), swatches):
        blended = np.array([int(ALPHA * c) for c in colour])
        drawn = (np.abs(pixels - blended).max(-1) <= 1) & (pixels.sum(-1) > 0)
        assert drawn.any() == (value != 3), value


def test_overlay_left_marker_is_on_the_side_of_the_left_hemisphere(tmp_path):
    image, labels = _asymmetric_labels()
    path = save_overlay(tmp_path / "qc.png", image, labels, torch.from_numpy(PERMUTED_AFFINE), alpha=ALPHA)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    markers = (pixels == MARKER_COLOUR).all(-1)
    lefts, rights = _find_letters(markers, "L"), _find_letters(markers, "R")
    assert len(lefts) == 4 and len(rights) == 4  # coronal and axial views of both rows
    grey = (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])
    coloured = ~grey & ~markers
    red_dominant = coloured & (pixels[..., 0] > pixels[..., 2])  # label 1 colour (230, 25, 75) vs 2 (60, 180, 75)
    letter_rows = sorted(row for row, _ in lefts)
    boundary = int((letter_rows[1] + letter_rows[2]) / 2)  # between the input row's views and the overlay's
    assert not coloured[:boundary].any()
    for row, left_column in lefts:
        if row < boundary:
            continue
        right_column = min((c for r, c in rights if abs(r - row) <= 2 and c > left_column), default=None)
        assert right_column is not None
        # This view: the overlay row, between its L and R letters.
        view = (slice(boundary, None), slice(int(left_column), int(right_column) + 1))
        left_blob_columns = np.nonzero(red_dominant[view])[1] + view[1].start
        right_blob_columns = np.nonzero(coloured[view] & ~red_dominant[view])[1] + view[1].start
        middle = (left_column + right_column) / 2
        assert left_blob_columns.size and right_blob_columns.size
        assert left_blob_columns.mean() < middle < right_blob_columns.mean()


def test_montage_rows_show_the_same_world_point_after_crop_and_resample(tmp_path):
    shape = (32, 32, 32)
    volume = np.zeros(shape, dtype=np.float32)
    volume[2:30, 14:32, 12:32] = 100.0  # a "head" away from the centre: the crop follows it
    world = _world_coordinates(shape, PERMUTED_AFFINE)
    centre = (PERMUTED_AFFINE @ np.append((np.array(shape) - 1) / 2, 1))[:3]
    volume[np.abs(world - centre).max(-1) <= 4.5] = 1000.0  # a 10 mm cube at the centre of the field of view
    sample = gp.make_sample({"image": torch.from_numpy(volume)[None]}, affine=torch.from_numpy(PERMUTED_AFFINE))
    after = gp.Compose([gp.CropOrPad("image", (20, 20, 20), center="foreground"), gp.Resample("image", 1.5)])(sample)
    assert not np.allclose(gp.get_affine(after, "image").numpy()[:3, 3], PERMUTED_AFFINE[:3, 3])
    path = save_montage(tmp_path / "qc.png", [("before", sample["image"], gp.get_affine(sample, "image")),
                                              ("after", after["image"], gp.get_affine(after, "image"))])
    pixels = np.asarray(Image.open(path).convert("L")).astype(int)
    half = pixels.shape[0] // 2
    centres = []
    for rows in (pixels[:half], pixels[half:]):
        components, count = ndimage.label(rows >= 200)
        sizes = ndimage.sum(np.ones_like(rows), components, range(1, count + 1))
        big = [i + 1 for i, size in enumerate(sizes) if size >= 150]  # the cube, not the letters
        centres.append(sorted(ndimage.center_of_mass(rows >= 200, components, big), key=lambda c: c[1]))
    assert len(centres[0]) == 3 and len(centres[1]) == 3  # the cube in all three views of both rows
    np.testing.assert_allclose(centres[1], centres[0], atol=3.0)  # pixels; 1 mm is 2.5 pixels here
