"""The plugin's saved settings (napari's plugin configuration), read where napari provides them."""

from __future__ import annotations

PLUGIN = "napari-cdinn"


def _section(name: str):
    try:
        from napari.settings import get_plugin_settings

        return getattr(get_plugin_settings(PLUGIN), name)
    except Exception:  # napari < 0.9 (no plugin configurations) or settings unavailable
        return None


def _compute_settings():
    return _section("compute")


def device_choice() -> str:
    """The compute device the user chose in napari's preferences: auto, cpu or cuda."""
    compute = _compute_settings()
    return str(getattr(compute, "device", "auto") or "auto")


def set_device_choice(choice: str) -> None:
    compute = _compute_settings()
    if compute is not None:
        compute.device = choice


def on_device_change(callback) -> None:
    """Call ``callback(event)`` (``event.value`` the new choice) whenever the device setting
    changes, in the preferences too; napari holds a bound method weakly."""
    compute = _compute_settings()
    if compute is not None and hasattr(compute, "events"):
        compute.events.device.connect(callback)


def on_invert_on_open_change(callback) -> None:
    """Call ``callback(event)`` whenever the invert-on-open setting changes (the preferences
    too), so a dock's box shows what the reader will do."""
    section = _section("cdi")
    if section is not None and hasattr(section, "events"):
        section.events.invert_on_open.connect(callback)


def invert_on_open() -> bool:
    """Whether every diffraction file opened is inverted by the network at once."""
    return bool(getattr(_section("cdi"), "invert_on_open", False))


def set_invert_on_open(value: bool) -> None:
    section = _section("cdi")
    if section is not None:
        section.invert_on_open = bool(value)
