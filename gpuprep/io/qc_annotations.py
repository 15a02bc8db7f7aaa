"""Annotations of quality-control PNGs: orientation letters on each view and a legend of label colours."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

#: The three views of :func:`gpuprep.io.montage.orthogonal_slices`, in their order.
VIEWS = ("sagittal", "coronal", "axial")
#: Letters at the left, right, top and bottom edge of each view. Views are shown in RAS:
#: the patient's left on the image's left (neurological convention), superior and anterior up.
MARKERS = {"sagittal": ("P", "A", "S", "I"), "coronal": ("L", "R", "S", "I"), "axial": ("L", "R", "A", "P")}
#: Colour of the orientation letters in colour PNGs: pure yellow, which no grey pixel and no
#: blend of a grey with a label colour can take.
MARKER_COLOUR = (255, 255, 0)
_SWATCH = 12  # legend swatch side, pixels
_GAP = 6


def font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The font of every annotation: Pillow's built-in default (no font file, works offline)."""
    return ImageFont.load_default()


def draw_markers(tile: Image.Image, view: str, fill: int | tuple[int, int, int]) -> None:
    """Write the orientation letters of ``view`` at the middle of each edge of ``tile``, in place.

    Each letter sits on a black box and is drawn without anti-aliasing, so its pixels have
    exactly the colour ``fill``.

    Parameters
    ----------
    tile:
        The slice image (mode ``"L"`` or ``"RGB"``).
    view:
        ``"sagittal"``, ``"coronal"`` or ``"axial"`` (see :data:`MARKERS`).
    fill:
        Letter colour (an int for mode ``"L"``).

    Example
    -------
    >>> tile = Image.new("RGB", (60, 40))
    >>> draw_markers(tile, "axial", MARKER_COLOUR)
    >>> MARKER_COLOUR in {colour for _, colour in tile.getcolors()}
    True
    """
    draw = ImageDraw.Draw(tile)
    draw.fontmode = "1"
    width, height = tile.size
    for side, letter in zip(("left", "right", "top", "bottom"), MARKERS[view]):
        left, top, right, bottom = draw.textbbox((0, 0), letter, font=font())
        text_width, text_height = right - left, bottom - top
        x = {"left": 2, "right": width - 2 - text_width}.get(side, (width - text_width) // 2)
        y = {"top": 2, "bottom": height - 2 - text_height}.get(side, (height - text_height) // 2)
        draw.rectangle((x - 1, y - 1, x + text_width, y + text_height), fill=0 if tile.mode == "L" else (0, 0, 0))
        draw.text((x - left, y - top), letter, font=font(), fill=fill)


def legend(entries: Sequence[tuple[tuple[int, int, int], str]], width: int) -> Image.Image:
    """Return a legend strip: one colour swatch and its name per entry, wrapped to ``width`` pixels.

    Parameters
    ----------
    entries:
        ``(rgb, name)`` pairs, e.g. ``((230, 25, 75), "1 CSF")``.
    width:
        Width of the strip.

    Example
    -------
    >>> legend([((230, 25, 75), "CSF"), ((60, 180, 75), "GM")], 200).getpixel((10, 10))
    (230, 25, 75)
    """
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = _SWATCH + _GAP
    places, x, y = [], _GAP, _GAP
    for colour, name in entries:
        text_width = int(draw_probe.textlength(name, font=font()))
        entry_width = _SWATCH + 4 + text_width + 2 * _GAP
        if x > _GAP and x + entry_width > width:
            x, y = _GAP, y + line_height
        places.append((x, y, colour, name))
        x += entry_width
    strip = Image.new("RGB", (max(width, 1), y + line_height), color=(0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for x, y, colour, name in places:
        draw.rectangle((x, y, x + _SWATCH - 1, y + _SWATCH - 1), fill=tuple(int(c) for c in colour))
        draw.text((x + _SWATCH + 4, y), name, font=font(), fill=(255, 255, 255))
    return strip
