"""The plugin's saved settings (napari's plugin configuration), read where napari provides them."""

from __future__ import annotations

PLUGIN = "napari-cdinn"


def _compute_settings():
    try:
        from napari.settings import get_plugin_settings

        return get_plugin_settings(PLUGIN).compute
    except Exception:  # napari < 0.9 (no plugin configurations) or settings unavailable
        return None


def device_choice() -> str:
    """The compute device the user chose in napari's preferences: auto, cpu or cuda."""
    compute = _compute_settings()
    return str(getattr(compute, "device", "auto") or "auto")


def set_device_choice(choice: str) -> None:
    compute = _compute_settings()
    if compute is not None:
        compute.device = choice
