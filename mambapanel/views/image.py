"""The Image view: one image (the run's thumbnail, the model's centre crop) with a map of that
image laid over it: its own attention from (or to) the query patches (content-relevant
attention, per image), from the CLS token (Vim), or an explanation of its prediction
(rollout, attribution: mambapanel.explain) with the perturbation test's numbers for it beside.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import param

from mambapanel.store import THUMBNAIL_SIZE
from mambapanel.views.data import RunData
from mambapanel.views.hold import held
from mambapanel.views.patch import (
    FRAME,
    click,
    direction_parameter,
    grid_opts,
    outline,
    queried,
    query_parameter,
    query_text,
    route_parameter,
)
from mambapanel.views.problems import Problems
from mambapanel.views.style import (
    MENU_HEIGHT,
    SCALE_LABELS,
    SCALES,
    SLIDER_HEIGHT,
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


# What the Image view can lay over the image: label -> value. "cls" needs a run that stores
# its CLS token's attention (Vim), the explanations a run made with them.
MAPS = {
    "attention of the query patches": "patch",
    "attention from CLS": "cls",
    "rollout": "rollout",
    "attribution (gradient × attention)": "attribution",
}
MAP_NAMES = {value: label for label, value in MAPS.items()}
RELEVANCE_MAPS = ("rollout", "attribution")  # on the run's relevance grid, not the stage's


def map_layer(
    values: np.ndarray,
    extent: tuple[float, float],
    opacity: float,
    scale: str,
    label: str = "attention",
) -> hv.Image:
    """A map f(height, width) of any grid spread over the image, whose plot spans
    ``extent`` (height, width) stored patches (see :func:`thumbnail_rgb`)."""
    values = scaled(values, scale)
    height, width = values.shape
    xs = (np.arange(width) + 0.5) * extent[1] / width - 0.5
    ys = (np.arange(height) + 0.5) * extent[0] / height - 0.5
    return hv.Image((xs, ys, values), ["col", "row"], [label]).opts(
        cmap=attention_cmap(scale),
        clim=colour_limits(values, scale),
        logz=scale == "log",
        alpha=opacity,
        colorbar=True,
        clabel=SCALE_LABELS[scale] if label == "attention" else f"{label}, {SCALE_LABELS[scale]}",
        clipping_colors={"NaN": (0, 0, 0, 0)},
    )


class ImageView(pn.viewable.Viewer):
    """One image with a map over it: its attention from (or to) the query patches (needs a
    block and a query or a clicked patch), from CLS (needs a block), or a relevance map of
    its prediction."""

    run = param.ClassSelector(class_=RunData, doc="The run whose images are shown.")
    stage = param.Integer(default=0, bounds=(0, None), doc="Stage of the model.")
    block = param.Integer(
        default=None, allow_None=True, bounds=(0, None), doc="Block whose attention is shown."
    )
    image = param.Integer(default=0, bounds=(0, None), doc="Index of the image in the run.")
    patch = param.Tuple(
        default=None, length=2, allow_None=True, doc="(row, col) of the clicked patch."
    )
    query = query_parameter()
    direction = direction_parameter()
    scale = param.Selector(
        default="strength", objects=list(SCALES), doc="Colour scale of attention (style.SCALES)."
    )
    route = route_parameter(
        "Route whose part of the attention from the clicked patch is shown: a run keeps it as "
        "the mean over images only (attention_mean_by_route); None: the image's own."
    )
    opacity = param.Number(default=0.5, bounds=(0, 1), doc="Opacity of the attention layer.")
    shown = param.Selector(
        default="patch", objects=list(MAPS.values()), doc="The map laid over the image (MAPS)."
    )

    # Whether there is attention to lay over the image; a change of it draws the plot anew
    # (a Bokeh plot keeps its layers and colour bar).
    _attention = param.Boolean(default=False, precedence=-1)

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.tap: hv.streams.Tap | None = None
        self.problems = Problems()
        self._plot = pn.Column(sizing_mode="stretch_width")
        # Heights given, as style.BUTTON_HEIGHT says why: these two are above the figure.
        self._opacity = pn.widgets.FloatSlider.from_param(
            self.param.opacity, label="attention opacity", width=FRAME, height=SLIDER_HEIGHT
        )
        self._maps = pn.widgets.Select(
            label="map", width=FRAME, height=MENU_HEIGHT, css_classes=["mambapanel-map"]
        )
        self._maps.param.watch(lambda event: setattr(self, "shown", event.new), "value")
        self.faithfulness = pn.pane.HTML(
            width=FRAME, visible=False, css_classes=["mambapanel-faithfulness"]
        )
        self._offer_maps()
        self._update_faithfulness()
        self._build()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            self._maps,
            self._opacity,
            self.problems.pane,
            self._plot,
            self.faithfulness,
            sizing_mode="stretch_width",
        )

    def maps(self) -> list[str]:
        """The maps this run can show at this stage (values of :data:`MAPS`)."""
        if self.run is None:
            return ["patch"]
        cls = ["cls"] if self.problems.read("cls", lambda: self.run.has_cls, False) else []
        return ["patch", *cls, *self.problems.read("maps", lambda: self.run.explanations, [])]

    @param.depends("run", "stage", watch=True)
    def _offer_maps(self) -> None:
        maps = self.maps()
        self._maps.options = {MAP_NAMES[value]: value for value in maps}
        self._maps.visible = len(maps) > 1
        if self.shown not in maps:
            self.shown = "patch"
        self._maps.value = self.shown

    @property
    def queried(self) -> list[tuple[int, int]]:
        """The query patches (:func:`mambapanel.views.patch.queried`)."""
        return queried(self.query, self.patch)

    def attention(self) -> np.ndarray | None:
        """The map shown over the image: the image's mean attention from (or to) the query
        patches (:meth:`RunData.image_query_attention`) or its attention from CLS,
        f32(height, width) on the stage's stored grid, or its relevance map on the run's
        relevance grid; None without what it needs (a block; for ``patch``, a query)."""
        if self.shown in RELEVANCE_MAPS:
            return self.run.relevance(self.image, self.shown)
        if self.block is None:
            return None
        if self.shown == "cls":
            return self.run.cls_attention(self.stage, self.block, self.image)
        if not self.queried:
            return None
        if self.attention_of_route:
            return self.run.query_attention(
                self.stage, self.block, self.queried, self.direction, self.route
            )
        return self.run.image_query_attention(
            self.stage, self.block, self.image, self.queried, self.direction
        )

    @property
    def attention_of_route(self) -> bool:
        """Whether the map shown is one route's part of the attention of the query patches
        (its mean over images: a run stores no image's own by route)."""
        return self.shown == "patch" and self.route is not None

    def layer_values(self) -> np.ndarray | None:
        """:meth:`attention` on a grid that covers the whole image: the stage's full grid
        (each stored patch spread over the patches it pools) or the relevance grid."""
        values = self.attention()
        if values is None or self.shown in RELEVANCE_MAPS:
            return values
        return full_grid_values(values, self.run.pool(self.stage), self.run.full_grid(self.stage))

    @param.depends("block", "patch", "query", "shown", watch=True, on_init=True)
    def _update_attention(self) -> None:
        query = self.queried or None
        needs = {"patch": (self.block, query), "cls": (self.block,)}.get(self.shown, ())
        self._attention = all(value is not None for value in needs)

    @param.depends("run", "image", "shown", watch=True)
    def _update_faithfulness(self) -> None:
        """The perturbation test's numbers for the map shown, on this image and the run."""
        if self.run is None or self.shown == "patch":
            self.faithfulness.visible = False
            return
        read = self.problems.read("faithfulness", self.run.faithfulness, ([], None))
        self.faithfulness.param.update(object=faithfulness_html(*read, self.shown, self.image))
        self.faithfulness.visible = True

    def select(self, x: float | None, y: float | None) -> None:
        """A tap at (col, row) = (x, y) on the image clicks the patch there."""
        click(self, x, y)

    @param.depends("run", "stage", "scale", "_attention", watch=True)
    def _build(self) -> None:
        """Draw anew; other changes (block, image, query, opacity) update it in place."""
        if self.run is None:
            self._plot[:] = [pn.pane.Alert("No run.", alert_type="warning")]
            return
        # One stream for every layer: the plot is refreshed once per change, each layer's
        # stream refreshed it (and read the map) once more.
        changes = ["image", "block", "patch", "query", "direction", "opacity", "shown", "route"]
        streams = [hv.streams.Params(self, changes)]
        image = hv.DynamicMap(self._image, streams=streams)
        layers = image
        if self._attention:
            layers = layers * hv.DynamicMap(self._attention_layer, streams=streams)
        # The stream on the image, not on the overlay (see PatchView._build).
        self.tap = hv.streams.Tap(source=image)
        self.tap.add_subscriber(held(self.select))
        outlines = hv.DynamicMap(lambda **_: outline(self.queried), streams=streams)
        # The overlay's hook runs last on every update: an element's hook runs before the
        # overlay's own options make the figure fixed-size again (it then collapsed to 0).
        overlay = (layers * outlines).opts(hooks=[named("image-view", fit=True)])
        self._plot[:] = [figure_pane(overlay, fit_width=True)]

    def _image(self, **_: object) -> hv.RGB:
        image_id = self.run.image_ids[self.image]
        if self.shown in RELEVANCE_MAPS:
            title = f"{image_id}: {self.shown} of its prediction"
        elif self.block is None:
            title = f"{image_id}: pick a block" + (" and a patch" if self.shown == "patch" else "")
        elif self.shown == "cls":
            title = f"{image_id}: block {self.block}, from CLS"
        elif not self.queried:
            title = f"{image_id}: pick a patch"
        else:
            # A route's part is stored as the mean over images only: the title says so.
            route = f", route {self.route} (mean)" if self.attention_of_route else ""
            shown = query_text(self.queried, self.direction, listed=0)
            title = f"{image_id}: block {self.block}{route}, {shown}"
        blank = np.full((THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3), 255, dtype=np.uint8)
        thumbnail = self.problems.read("thumbnail", lambda: self.run.thumbnail(self.image), blank)
        return thumbnail_rgb(
            thumbnail,
            self.run.pool(self.stage),
            self.run.full_grid(self.stage),
            **grid_opts(title, self.run.grid(self.stage)),
        )

    def _attention_layer(self, **_: object) -> hv.Image:
        values = self.problems.read("attention", self.layer_values, None)
        opacity = self.opacity
        pool, full_grid = self.run.pool(self.stage), self.run.full_grid(self.stage)
        # None: a plot being replaced, updated once more on its way out, or a damaged run
        # (the message is above the image). Ones, not NaN (HoloViews warns of an all-NaN
        # range), drawn transparent.
        if values is None:
            values, opacity = np.ones(full_grid, dtype=np.float32), 0.0
        extent = tuple(side / pool for side in full_grid)
        label = "relevance" if self.shown in RELEVANCE_MAPS else "attention"
        return map_layer(values, extent, opacity, self.scale, label)


def faithfulness_html(tests: list[str], areas: np.ndarray | None, shown: str, image: int) -> str:
    """The perturbation test of map ``shown`` (a test of ``tests``; areas f(image, test,
    removal) as :meth:`RunData.faithfulness` returns them) on ``image`` and over the run's
    tested images, beside the random map's, as HTML."""
    if areas is None or shown not in tests:
        return "<p>This run has no perturbation test of this map.</p>"
    tested = np.isfinite(areas).all(axis=(1, 2))
    if not tested.any():
        return "<p>The perturbation test ran on no image of this run.</p>"
    row = tests.index(shown)
    random = tests.index("random") if "random" in tests else None

    def areas_of(images: np.ndarray | int, index: int) -> str:
        most, least = np.atleast_2d(areas[images, index]).mean(axis=0)
        return f"{most:.2f} / {least:.2f}"

    lines = [
        "<p><b>Perturbation test</b> (mean class probability as patches are removed, "
        "most relevant first / least relevant first; a faithful map: low / high)</p><ul>"
    ]
    if tested[image]:
        lines.append(f"<li>this image: {areas_of(image, row)}</li>")
    else:
        lines.append(f"<li>this image: not tested (the first {int(tested.sum())} were)</li>")
    lines.append(f"<li>the run's {int(tested.sum())} images: {areas_of(tested, row)}</li>")
    if random is not None:
        lines.append(f"<li>a random map, same images: {areas_of(tested, random)}</li>")
    lines.append("</ul>")
    if shown == "cls":  # the test removes patches by the last block's CLS row
        lines.append("<p>(tested: the last block's attention from CLS, |α|)</p>")
    return "".join(lines)
