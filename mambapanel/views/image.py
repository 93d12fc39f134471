"""The Image view: one image (the run's thumbnail, the model's centre crop) with that image's
own attention from the clicked patch laid over it: content-relevant attention, per image.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import param

from mambapanel.store import THUMBNAIL_SIZE
from mambapanel.views.data import RunData
from mambapanel.views.hold import held
from mambapanel.views.patch import FRAME, grid_opts, outlined, patch_at
from mambapanel.views.problems import Problems
from mambapanel.views.style import (
    SCALE_LABELS,
    SCALES,
    attention_cmap,
    colour_limits,
    figure_pane,
    named,
    scaled,
)


def full_grid_values(values: np.ndarray, pool: int, full_grid: tuple[int, int]) -> np.ndarray:
    """A stored (pooled) grid spread back over the model's full grid: each stored patch
    covers ``pool`` x ``pool`` patches, cut at the bottom and right edges as the store's
    pooling windows are."""
    spread = np.repeat(np.repeat(values, pool, axis=0), pool, axis=1)
    return spread[: full_grid[0], : full_grid[1]]


def thumbnail_rgb(
    thumbnail: np.ndarray, pool: int, full_grid: tuple[int, int], **options: object
) -> hv.RGB:
    """The thumbnail u8(y, x, 3) in patch coordinates (col, row): stored patch (r, c) is
    centred on (c, r), and the image covers the model's full grid; ``options`` are the
    plot's."""
    height, width = (side / pool for side in full_grid)
    pixels_y, pixels_x = thumbnail.shape[:2]
    # Pixel centres in patch units: the image spans [-0.5, width - 0.5] x [-0.5, height - 0.5].
    xs = (np.arange(pixels_x) + 0.5) * width / pixels_x - 0.5
    ys = (np.arange(pixels_y) + 0.5) * height / pixels_y - 0.5
    channels = [thumbnail[..., channel] for channel in range(3)]
    return hv.RGB((xs, ys, *channels), ["col", "row"]).opts(**options)


def attention_layer(
    attention: np.ndarray, pool: int, full_grid: tuple[int, int], opacity: float, scale: str
) -> hv.Image:
    """Attention f(height, width) on the stored grid, drawn over the full grid it covers."""
    values = scaled(full_grid_values(attention, pool, full_grid), scale)
    full_height, full_width = values.shape
    xs = (np.arange(full_width) + 0.5) / pool - 0.5
    ys = (np.arange(full_height) + 0.5) / pool - 0.5
    return hv.Image((xs, ys, values), ["col", "row"], ["attention"]).opts(
        cmap=attention_cmap(scale),
        clim=colour_limits(values, scale),
        logz=scale == "log",
        alpha=opacity,
        colorbar=True,
        clabel=SCALE_LABELS[scale],
        clipping_colors={"NaN": (0, 0, 0, 0)},
    )


class ImageView(pn.viewable.Viewer):
    """One image with its attention from the clicked patch (needs a block and a patch)."""

    run = param.ClassSelector(class_=RunData, doc="The run whose images are shown.")
    stage = param.Integer(default=0, bounds=(0, None), doc="Stage of the model.")
    block = param.Integer(
        default=None, allow_None=True, bounds=(0, None), doc="Block whose attention is shown."
    )
    image = param.Integer(default=0, bounds=(0, None), doc="Index of the image in the run.")
    patch = param.Tuple(
        default=None, length=2, allow_None=True, doc="(row, col) of the clicked patch."
    )
    scale = param.Selector(
        default="strength", objects=list(SCALES), doc="Colour scale of attention (style.SCALES)."
    )
    opacity = param.Number(default=0.5, bounds=(0, 1), doc="Opacity of the attention layer.")

    # Whether there is attention to lay over the image; a change of it draws the plot anew
    # (a Bokeh plot keeps its layers and colour bar).
    _attention = param.Boolean(default=False, precedence=-1)

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.tap: hv.streams.Tap | None = None
        self.problems = Problems()
        self._plot = pn.Column()
        self._opacity = pn.widgets.FloatSlider.from_param(
            self.param.opacity, label="attention opacity", width=FRAME
        )
        self._build()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self._opacity, self.problems.pane, self._plot)

    def attention(self) -> np.ndarray | None:
        """The image's attention row from the clicked patch, f32(height, width), or None
        without a block or a patch."""
        if self.block is None or self.patch is None:
            return None
        return self.run.image_attention_row(self.stage, self.block, self.image, self.patch)

    @param.depends("block", "patch", watch=True, on_init=True)
    def _update_attention(self) -> None:
        self._attention = self.block is not None and self.patch is not None

    def select(self, x: float | None, y: float | None) -> None:
        """A tap at (col, row) = (x, y) on the image clicks the patch there."""
        self.patch = patch_at(self.run.grid(self.stage), x, y) or self.patch

    @param.depends("run", "stage", "scale", "_attention", watch=True)
    def _build(self) -> None:
        """Draw anew; other changes (block, image, patch, opacity) update it in place."""
        if self.run is None:
            self._plot[:] = [pn.pane.Alert("No run.", alert_type="warning")]
            return
        image = hv.DynamicMap(
            self._image, streams=[hv.streams.Params(self, ["image", "block", "patch"])]
        )
        layers = image
        if self._attention:
            streams = [hv.streams.Params(self, ["block", "image", "patch", "opacity"])]
            layers = layers * hv.DynamicMap(self._attention_layer, streams=streams)
        # The stream on the image, not on the overlay (see PatchView._build).
        self.tap = hv.streams.Tap(source=image)
        self.tap.add_subscriber(held(self.select))
        self._plot[:] = [figure_pane(layers * outlined(self))]

    def _image(self, **_: object) -> hv.RGB:
        image_id = self.run.image_ids[self.image]
        if self.block is None or self.patch is None:
            title = f"{image_id}: pick a block and a patch"
        else:
            title = f"{image_id}: block {self.block}, from ({self.patch[0]}, {self.patch[1]})"
        blank = np.full((THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3), 255, dtype=np.uint8)
        thumbnail = self.problems.read("thumbnail", lambda: self.run.thumbnail(self.image), blank)
        return thumbnail_rgb(
            thumbnail,
            self.run.pool(self.stage),
            self.run.full_grid(self.stage),
            hooks=[named("image-view")],
            **grid_opts(title, self.run.grid(self.stage)),
        )

    def _attention_layer(self, **_: object) -> hv.Image:
        attention = self.problems.read("attention", self.attention, None)
        opacity = self.opacity
        # None: a plot being replaced, updated once more on its way out, or a damaged run
        # (the message is above the image). Ones, not NaN (HoloViews warns of an all-NaN
        # range), drawn transparent.
        if attention is None:
            attention, opacity = np.ones(self.run.grid(self.stage), dtype=np.float32), 0.0
        return attention_layer(
            attention,
            self.run.pool(self.stage),
            self.run.full_grid(self.stage),
            opacity,
            self.scale,
        )
