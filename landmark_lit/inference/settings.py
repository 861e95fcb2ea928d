"""How a predictor runs: one frozen, validated set of run settings (:class:`RunSettings`), shared by the
predictor (:class:`~landmark_lit.inference.predictor.LandmarkPredictor`), model bundles and the
``landmark-predict`` / ``landmark-export`` options, and the test-time mirror (:class:`MirrorAverage`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from landmark_lit.data.transforms import mirror_permutation
from landmark_lit.utils import is_finite_number

# the score of an uncalibrated model: posterior * exp(-(spread + shift) / (scale * working spacing))
DEFAULT_CONFIDENCE_SCALE = 3.0
# test-time averaging of a local stage's last pass over sub-images moved by half a cell of its network's
# output grid (stride / 2 working voxels, at least one) (RunSettings.local_shifts): none; axes, + along
# each axis (D + 1 sub-images per landmark); faces, - and + along each axis (2D + 1)
LOCAL_SHIFTS = ("none", "axes", "faces")


@dataclass(frozen=True)
class MirrorAverage:
    """Average each stage's answer over the image and its mirror image (test-time augmentation).

    ``axes``: spatial array axes mirrored together; ``pairs``: landmark index pairs a mirror swaps (left /
    right anatomy; none in a lateral projection such as a cephalogram); ``whole``: also run the global stage
    on the mirrored image (else only the local stages see mirrored sub-images). Valid for networks trained
    with the same mirror (``data.flip``): in the mirrored pass network k sees what network k saw in its
    mirrored training images, and its answer, mirrored back, is landmark ``pairs``' partner's.
    """

    axes: tuple[int, ...] = (0,)
    pairs: tuple[tuple[int, int], ...] = ()
    whole: bool = False

    def __post_init__(self) -> None:
        if not self.axes or len(set(self.axes)) != len(self.axes) or min(self.axes) < 0:
            raise ValueError(f"test-time mirror axes must be distinct spatial axes, got {list(self.axes)}")
        used = [i for p in self.pairs for i in p]
        if any(len(p) != 2 for p in self.pairs) or len(set(used)) != len(used) or min(used, default=0) < 0:
            raise ValueError(f"test-time mirror pairs must be disjoint index pairs, got {list(self.pairs)}")

    def permutation(self, num_landmarks: int) -> list[int]:
        """perm[k]: the landmark whose mirror image looks like landmark k (an involution), by the same rule
        as the training mirror (:func:`~landmark_lit.data.transforms.mirror_permutation`)."""
        return mirror_permutation(self.pairs, num_landmarks)

    def check(self, num_landmarks: int, spatial_dims: int) -> None:
        """ValueError unless the axes and pairs fit a model of ``num_landmarks`` and ``spatial_dims``."""
        self.permutation(num_landmarks)
        if max(self.axes) >= spatial_dims:
            raise ValueError(
                f"test-time mirror axes {list(self.axes)} out of range for a {spatial_dims}D model"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"axes": list(self.axes), "pairs": [list(p) for p in self.pairs], "whole": self.whole}

    @classmethod
    def from_dict(cls, data: Any, names: Sequence[str] | None = None) -> MirrorAverage | None:
        """From ``{"axes": [...], "pairs": [[i, j], ...], "whole": bool}`` (None: no mirror); pairs may name
        landmarks when ``names`` are given. ValueError (one line) for anything else."""
        if data is None:
            return None
        if not isinstance(data, dict) or set(data) - {"axes", "pairs", "whole"}:
            raise ValueError(f"test-time mirror must be a mapping of axes, pairs, whole; got {data!r}")

        def index(v: Any) -> int:
            if isinstance(v, str) and names is not None and v in names:
                return list(names).index(v)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            raise ValueError(f"test-time mirror pair member {v!r} is not a landmark index or name")

        try:
            axes = tuple(int(a) for a in data.get("axes", (0,)))
            pairs = tuple((index(i), index(j)) for i, j in data.get("pairs") or ())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"test-time mirror {data!r}: {exc}") from None
        return cls(axes, pairs, bool(data.get("whole", False)))


@dataclass(frozen=True)
class RunSettings:
    """How a predictor runs; checked when built, so a bad value is one clear error before any image is read.

    Attributes:
        local_iterations: passes of each local stage, each on a sub-image re-centred on its last answer
            (at least 1).
        confidence_threshold: flag landmarks below this confidence instead of the calibration's threshold
            (None: the calibration's; an uncalibrated model then flags nothing).
        confidence_scale: the scale of an uncalibrated model's score (positive; see
            :func:`~landmark_lit.inference.predictor.landmark_confidence`).
        mirror: the test-time mirror (None: none).
        local_repass_mm: the passes after a local stage's first run only for the landmarks the pass before
            moved more than this many mm (0: every landmark every pass).
        local_shifts: the last pass of each local stage averaged over sub-images moved by half a cell of
            its network's output grid (one of :data:`LOCAL_SHIFTS`; "none": the one centred sub-image).
    """

    local_iterations: int = 1
    confidence_threshold: float | None = None
    confidence_scale: float = DEFAULT_CONFIDENCE_SCALE
    mirror: MirrorAverage | None = None
    local_repass_mm: float = 0.0
    local_shifts: str = "none"

    def __post_init__(self) -> None:
        n = self.local_iterations
        if not is_finite_number(n) or int(n) != n:
            raise ValueError(f"local_iterations must be a whole number, got {n!r}")
        if n < 1:
            raise ValueError(f"local_iterations must be at least 1, got {n!r}")
        r = self.local_repass_mm
        if not is_finite_number(r) or r < 0:
            raise ValueError(f"local_repass_mm must be a number of mm, 0 or more, got {r!r}")
        if self.local_shifts not in LOCAL_SHIFTS:
            raise ValueError(f"local_shifts must be one of {list(LOCAL_SHIFTS)}, got {self.local_shifts!r}")
        t = self.confidence_threshold
        if t is not None and not is_finite_number(t):
            raise ValueError(f"confidence_threshold must be a finite number or null, got {t!r}")
        s = self.confidence_scale
        if not is_finite_number(s) or s <= 0:
            raise ValueError(f"confidence_scale must be positive, got {s!r}")
        if self.mirror is not None and not isinstance(self.mirror, MirrorAverage):
            raise ValueError(f"mirror must be a MirrorAverage or None, got {self.mirror!r}")
        object.__setattr__(self, "local_iterations", int(n))
        object.__setattr__(self, "local_repass_mm", float(r))
        object.__setattr__(self, "confidence_threshold", None if t is None else float(t))
        object.__setattr__(self, "confidence_scale", float(s))

    def changed(self, **changes: Any) -> RunSettings:
        """These settings with ``changes`` (checked); a change of None leaves a setting as it is."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown run settings {unknown}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def check_fits(self, num_landmarks: int, spatial_dims: int) -> None:
        """ValueError unless the mirror fits a model of ``num_landmarks`` and ``spatial_dims``."""
        if self.mirror is not None:
            self.mirror.check(num_landmarks, spatial_dims)

    def pipeline(self, local_stages: int) -> dict[str, Any]:
        """What runs with ``local_stages`` local stages: what a calibration describes (``fitted_on``)."""
        pipeline = {
            "local_stages": local_stages,
            "local_iterations": self.local_iterations if local_stages else 0,
            "mirror": None if self.mirror is None else self.mirror.to_dict(),
        }
        if local_stages and self.local_iterations > 1 and self.local_repass_mm > 0:
            # stated only when it changes what runs (calibrations written before it still match)
            pipeline["local_repass_mm"] = self.local_repass_mm
        if local_stages and self.local_shifts != "none":
            pipeline["local_shifts"] = self.local_shifts
        return pipeline

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as model bundles store it."""
        return {
            "local_iterations": self.local_iterations,
            "local_repass_mm": self.local_repass_mm,
            "local_shifts": self.local_shifts,
            "confidence_threshold": self.confidence_threshold,
            "confidence_scale": self.confidence_scale,
            "mirror": None if self.mirror is None else self.mirror.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSettings:
        """From :meth:`to_dict`'s form; missing keys take the defaults. ValueError (one line) otherwise."""
        return cls(
            local_iterations=data.get("local_iterations", 1),
            local_repass_mm=data.get("local_repass_mm", 0.0),
            local_shifts=data.get("local_shifts", "none"),
            confidence_threshold=data.get("confidence_threshold"),
            confidence_scale=data.get("confidence_scale", DEFAULT_CONFIDENCE_SCALE),
            mirror=MirrorAverage.from_dict(data.get("mirror")),
        )

    def overridden(self, options: Mapping[str, Any], landmark_names: Sequence[str]) -> RunSettings:
        """These settings changed by the options of ``landmark-predict`` / ``landmark-export`` (a null or
        absent option keeps the setting): ``local_iterations``, ``local_repass_mm``, ``local_shifts``,
        ``confidence_threshold``, ``confidence_scale`` and ``mirror``: "none" (off), "local" or "whole" (these settings' mirror axes
        and pairs, or array axis 0 without pairs when there are none), or a mapping ``{axes, pairs, whole}``
        (pairs by landmark index or name)."""
        value = options.get("mirror")
        mirror = self.mirror
        if value == "none":
            mirror = None
        elif value in ("local", "whole"):
            stored = self.mirror or MirrorAverage()
            mirror = MirrorAverage(stored.axes, stored.pairs, value == "whole")
        elif value is not None:
            mirror = MirrorAverage.from_dict(dict(value), landmark_names)
        changed = self.changed(
            local_iterations=options.get("local_iterations"),
            local_repass_mm=options.get("local_repass_mm"),
            local_shifts=options.get("local_shifts"),
            confidence_threshold=options.get("confidence_threshold"),
            confidence_scale=options.get("confidence_scale"),
        )
        return dataclasses.replace(changed, mirror=mirror)
