"""Controls that Panel's ``from_param`` cannot make: a menu whose labels differ from
its values and may include None (a Select cannot show None), and an image chooser that
stays light for runs with many images.
"""

from __future__ import annotations

from collections.abc import Callable

import panel as pn
import param

# More images than this are chosen by index: a menu of tens of thousands of names would
# weigh on every page load.
IMAGE_MENU_LIMIT = 500
NONE = "none"  # how a menu holds the value None


def linked_menu(
    target: param.Parameterized,
    name: str,
    options: Callable[[], dict[str, object]],
    refresh: list[str],
    **widget_params: object,
) -> pn.widgets.Select:
    """A Select kept in step with ``target.<name>`` both ways.

    Parameters
    ----------
    options : () -> {label: value}
        The choices, read again whenever a parameter in ``refresh`` (and ``name``) changes.
    """

    def encode(value: object) -> str:
        return NONE if value is None else str(value)

    widget = pn.widgets.Select(**widget_params)
    decoded: dict[str, object] = {}

    def to_widget(*_: object) -> None:
        choices = options()
        decoded.clear()
        decoded.update({encode(value): value for value in choices.values()})
        labelled = {label: encode(value) for label, value in choices.items()}
        widget.param.update(options=labelled, value=encode(getattr(target, name)))

    def from_widget(event: param.parameterized.Event) -> None:
        if event.new in decoded:
            setattr(target, name, decoded[event.new])

    to_widget()
    target.param.watch(to_widget, list(dict.fromkeys([name, *refresh])))
    widget.param.watch(from_widget, "value")
    return widget


def image_chooser(
    target: param.Parameterized, image_ids: Callable[[], list[str]], refresh: list[str]
) -> pn.Row:
    """A menu of image names following ``target.image``. With more than
    :data:`IMAGE_MENU_LIMIT` images the menu lists the images around the current one and an
    index input beside it reaches any other."""

    def window() -> dict[str, object]:
        ids, current = image_ids(), target.image
        start = max(0, min(current - IMAGE_MENU_LIMIT // 2, len(ids) - IMAGE_MENU_LIMIT))
        return {ids[i]: i for i in range(start, min(len(ids), start + IMAGE_MENU_LIMIT))}

    menu = linked_menu(target, "image", window, refresh, label="image", width=140)
    index = pn.widgets.IntInput.from_param(target.param.image, label="image index", width=90)

    def show(*_: object) -> None:
        index.visible = len(image_ids()) > IMAGE_MENU_LIMIT

    show()
    target.param.watch(show, refresh)
    return pn.Row(menu, index, margin=0)
