"""``synthetic:[seed=N,size=WxH,fps=F,frames=N]``: the synthetic drive as a source spec."""

from __future__ import annotations

from typing import Any

from models.datasets.synthetic_scene import check_drive_args

SPEC_KEYS = ("seed", "size", "fps", "frames")
_SPEC_HELP = "valid keys: seed=N, size=WxH, fps=F, frames=N (e.g. synthetic:seed=3,size=640x320,frames=100)"


def _parse_option(item: str, seen: set[str]) -> dict[str, Any]:
    key, eq, value = (part.strip() for part in item.partition("="))
    if key not in SPEC_KEYS or not eq or key in seen:
        raise ValueError(f"{'repeated' if key in seen else 'unknown or malformed'} option {item!r}")
    seen.add(key)
    try:
        if key == "size":
            width, height = value.lower().split("x")  # anything but exactly one "x" fails to unpack
            return {"width": int(width), "height": int(height)}
        return {key: float(value) if key == "fps" else int(value)}
    except ValueError:
        raise ValueError(f"bad value in {item!r}") from None


def parse_synthetic_spec(spec: str) -> dict[str, Any]:
    """``synthetic:[seed=N,size=WxH,fps=F,frames=N]`` -> SyntheticSource keyword arguments (with defaults)."""
    scheme, _, rest = spec.partition(":")
    params: dict[str, Any] = {"seed": 0, "width": 512, "height": 256, "fps": 15.0, "frames": None}
    seen: set[str] = set()
    try:
        if scheme.strip() != "synthetic":
            raise ValueError("it must start with 'synthetic:'")
        for item in (part.strip() for part in rest.split(",") if rest.strip()):
            params.update(_parse_option(item, seen))
        check_drive_args(params["seed"], params["width"], params["height"], params["fps"])
        if params["frames"] is not None and params["frames"] < 0:
            raise ValueError(f"frames must be >= 0, got {params['frames']}")
    except ValueError as exc:
        raise ValueError(f"synthetic spec {spec!r}: {exc}; {_SPEC_HELP}") from None
    return params
