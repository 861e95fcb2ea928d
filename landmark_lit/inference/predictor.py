"""Global-to-local prediction on an image array of any size, spacing and orientation.

:class:`LandmarkPredictor` runs the global stage on the whole image, then each local stage on one sub-image
per landmark (:mod:`landmark_lit.inference.passes`), scores each landmark
(:mod:`landmark_lit.inference.scoring`) and returns a :class:`Prediction`. Reading image files, timing and
writing results belong to :mod:`landmark_lit.inference.predict_files`; building stages from checkpoints and
bundles to :mod:`landmark_lit.inference.stages`; how it runs to :mod:`landmark_lit.inference.settings`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function

from landmark_lit.confidence import Calibration
from landmark_lit.data.streamed import StreamedVolume
from landmark_lit.data.transforms import image_tensor, match_channels, spacing_of, value_range, world_to_voxel
from landmark_lit.inference.passes import (
    StageEstimate,
    decode_stage,
    network_device,
    refine_in_turn,
    stage_estimate,
)
from landmark_lit.inference.scoring import calibration_warning, score_landmarks
from landmark_lit.inference.settings import RunSettings
from landmark_lit.inference.stages import Stage, check_stages_fit, load_bundle, load_stage, stage_calibration

log = logging.getLogger(__name__)


class InputError(ValueError):
    """An image the model cannot be run on (wrong dimensionality, empty, constant, too small, bad geometry)."""


@dataclass(frozen=True)
class GlobalView:
    """What the global stage saw and said (for vote-field pictures): its network output, its working
    image (C, *spatial) and that image's voxel -> world affine."""

    output: Any
    image: torch.Tensor
    affine: np.ndarray


@dataclass(frozen=True)
class Prediction:
    """The landmarks of one image.

    world: (K, D) world mm; voxel: (K, D) voxel indices of the given image; confidence: (K,) in [0, 1],
    with a calibrated model 1 - P(error > its failure distance); flagged: (K,) bool, confidence below the
    model's threshold; radius_mm: (K,) the true landmark lies this close with the calibration's
    probability (NaN without calibration); spread_mm, posterior: (K,) of the last stage; shift_mm: (K,)
    how far the last local pass moved each landmark (0 without local stages); features: (K, F) the cues
    of :data:`landmark_lit.confidence.FEATURES`; global_estimate: the global stage's answer; global_view:
    set with ``keep_global_view``; seconds, seconds_without_io: set by :mod:`landmark_lit.inference.predict_files`
    (with and without reading the file).
    """

    world: np.ndarray
    voxel: np.ndarray
    confidence: np.ndarray
    flagged: np.ndarray
    spread_mm: np.ndarray
    posterior: np.ndarray
    shift_mm: np.ndarray
    global_estimate: StageEstimate
    radius_mm: np.ndarray | None = None
    features: np.ndarray | None = None
    global_view: GlobalView | None = None
    seconds: float | None = None
    seconds_without_io: float | None = None


def check_image(
    image: np.ndarray | torch.Tensor | StreamedVolume, affine: np.ndarray, spatial_dims: int
) -> None:
    """Raise :class:`InputError` (one line) if a model of ``spatial_dims`` cannot run on this image
    (C, *spatial) with its voxel -> world affine. A streamed volume's values are checked once read
    (:func:`streamed_input`)."""
    d = spatial_dims
    shape = (1, *image.shape) if isinstance(image, StreamedVolume) else tuple(image.shape)
    if len(shape) - 1 != d:
        raise InputError(
            f"the model is {d}D but the image is {len(shape) - 1}D (array shape {shape}, channels first)"
        )
    if any(n == 0 for n in shape):
        raise InputError(f"the image is empty (array shape {shape})")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (d + 1, d + 1) or not np.all(np.isfinite(affine)):
        raise InputError(
            f"invalid geometry: the voxel -> world affine is not a finite {d + 1}x{d + 1} matrix"
        )
    if abs(np.linalg.det(affine[:d, :d])) < 1e-12 or np.any(spacing_of(affine) <= 0):
        raise InputError(f"invalid geometry: zero spacing or singular affine (spacing {spacing_of(affine)})")
    if not isinstance(image, StreamedVolume):
        check_values(*value_range(image))


def check_values(lo: float, hi: float) -> None:
    """:class:`InputError` for an image whose (min, max) are not finite or equal."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("the image contains NaN or infinite values")
    if lo == hi:
        raise InputError(f"the image is constant (every voxel is {lo:g}): no structure to find landmarks in")


def global_input(
    stage: Stage,
    image: np.ndarray | torch.Tensor | StreamedVolume,
    affine: np.ndarray,
    resampled: dict | None = None,
) -> tuple:
    """The image (C, *spatial) checked and in the global stage's channels (``x0``, for every stage), and
    its working image and affine at the stage's spacing; :class:`InputError` (one line) if the model
    cannot run on it. ``resampled``: working images made already (:func:`streamed_input`)."""
    if resampled is not None:
        with record_function("global preprocessing"):
            x, aff = stage.preprocessing.finish(*resampled[stage.preprocessing.resampling])
        return image, x, aff
    x0 = image_tensor(image)  # integers (a CT's int16) stay so until resampled, plane by plane
    check_image(x0, affine, int(stage.meta.spatial_dims))
    try:
        # one grey conversion (RGB -> grey) for all stages, done once on the full-size image
        x0 = match_channels(x0, stage.meta.net["in_channels"])
    except ValueError as exc:
        raise InputError(str(exc)) from None
    with record_function("global preprocessing"):
        x, aff = stage.preprocessing(x0, affine)
    _check_size(stage, x)
    return x0, x, aff


def _check_size(stage: Stage, x: torch.Tensor) -> None:
    stride = stage.net.stride
    if any(n < stride for n in x.shape[1:]):
        raise InputError(
            f"the image is {' x '.join(map(str, x.shape[1:]))} voxels at the global stage's "
            f"{stage.meta.spacing} mm, smaller than one {stride}-voxel patch of its network"
        )


def streamed_input(volume: StreamedVolume, affine: np.ndarray, stages: Sequence[Stage]) -> dict:
    """Every working image ``stages`` need, made in one pass over ``volume``'s planes while it is
    inflated (:meth:`StreamedVolume.resample`), keyed by :attr:`Preprocessing.resampling`."""
    g = stages[0]
    check_image(volume, affine, int(g.meta.spatial_dims))
    if g.meta.net["in_channels"] not in (None, 1):
        raise InputError(f"the model expects {g.meta.net['in_channels']} channel(s), the image has 1")
    keys = list(dict.fromkeys(s.preprocessing.resampling for s in stages))
    with record_function("streamed reading and resampling"):
        made, values = volume.resample(keys, affine)
    check_values(*values)
    resampled = dict(zip(keys, made, strict=True))
    _check_size(g, resampled[g.preprocessing.resampling][0])
    return resampled


def _setting(name: str, doc: str) -> property:
    """A read-only predictor attribute that is one of its run settings."""
    return property(lambda self: getattr(self.settings, name), doc=doc)


class LandmarkPredictor:
    """Global network on the whole image, then (optionally) each landmark's local network on a sub-image.

    Several local stages (coarse to fine) run in turn, each on sub-images centred on the previous stage's
    answer, as one checked :class:`RunSettings` says (``settings``, changed by keyword, e.g.
    ``local_iterations=2``, or by :meth:`configure`). Every landmark gets a confidence, a flag and an
    uncertainty radius from ``calibration`` (default: the last stage's; see
    :mod:`landmark_lit.inference.scoring` for a model without one). Files:
    :func:`landmark_lit.inference.predict_files.predict_file`.
    """

    def __init__(
        self,
        global_stage: Stage,
        local_stages: Stage | Sequence[Stage] | None = None,
        settings: RunSettings | None = None,
        calibration: Calibration | None = None,
        **changes: Any,
    ) -> None:
        local_stages = [local_stages] if isinstance(local_stages, Stage) else list(local_stages or [])
        check_stages_fit(global_stage, local_stages)
        self.global_stage, self.local_stages = global_stage, local_stages
        self.settings = RunSettings()
        self.configure(settings, **changes)
        last = self.local_stages[-1] if self.local_stages else global_stage
        self.calibration = calibration if calibration is not None else stage_calibration(last)
        self._warned = False

    def configure(self, settings: RunSettings | None = None, **changes: Any) -> LandmarkPredictor:
        """Run with ``settings`` (default: the current ones) changed by ``changes`` (None leaves a setting);
        ValueError (one line) for a setting that does not fit this model."""
        new = (settings or self.settings).changed(**changes)
        new.check_fits(len(self.landmark_names), self.spatial_dims)
        self.settings = new
        return self

    @classmethod
    def from_checkpoints(
        cls,
        global_checkpoint: str | os.PathLike,
        local_checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        settings: RunSettings | None = None,
        calibration: Calibration | None = None,
        **changes: Any,
    ) -> LandmarkPredictor:
        """``local_checkpoint``: one local stage, or several run in the given order (coarse to fine);
        ``calibration``: None for the one stored with the last stage."""
        given = [local_checkpoint] if isinstance(local_checkpoint, str | os.PathLike) else local_checkpoint
        locals_ = [load_stage(p, "local") for p in given or [] if str(p)]
        return cls(load_stage(global_checkpoint, "global"), locals_, settings, calibration, **changes)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike) -> LandmarkPredictor:
        """The predictor stored in a model bundle (:func:`landmark_lit.inference.stages.save_bundle`)."""
        b = load_bundle(path)
        return cls(b.global_stage, b.local_stages, b.settings, b.calibration)

    local_iterations = _setting("local_iterations", "passes of each local stage")
    local_repass_mm = _setting("local_repass_mm", "later local passes only for landmarks moved more")
    local_shifts = _setting("local_shifts", "the last local pass averaged over moved sub-images")
    confidence_scale = _setting("confidence_scale", "uncalibrated score's scale")
    mirror = _setting("mirror", "the test-time mirror (None: none)")
    local_stage = property(
        lambda self: self.local_stages[-1] if self.local_stages else None,
        doc="The last (finest) local stage, or None for a global-only predictor.",
    )
    landmark_names = property(lambda self: list(self.global_stage.meta.landmark_names))
    spatial_dims = property(lambda self: int(self.global_stage.meta.spatial_dims))

    @property
    def confidence_threshold(self) -> float | None:
        """Landmarks below this confidence are flagged: the settings', else the calibration's (None for an
        uncalibrated model: nothing flagged)."""
        if self.settings.confidence_threshold is not None:
            return self.settings.confidence_threshold
        return None if self.calibration is None else float(self.calibration.threshold)

    def pipeline(self) -> dict[str, Any]:
        """What a calibration of this predictor describes (stored in ``Calibration.fitted_on``)."""
        return self.settings.pipeline(len(self.local_stages))

    def set_vote_top_k(self, global_top_k: int | None = None, local_top_k: int | None = None) -> None:
        """Decode the global stage (and every local stage) from its ``top_k`` most confident cells; None
        leaves a stage as stored. Only methods whose decoder has ``top_k`` (the displacement method) take it."""
        if global_top_k is not None:
            self.global_stage = self.global_stage.with_decoder(top_k=int(global_top_k))
        if local_top_k is not None:
            self.local_stages = [s.with_decoder(top_k=int(local_top_k)) for s in self.local_stages]

    def to(self, device: str | torch.device) -> LandmarkPredictor:
        """Run every stage's network on ``device`` ("cpu", "cuda", "cuda:1", ...); reading, resampling,
        sub-image extraction and the returned arrays stay on the CPU."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(device)!r}: this torch has no CUDA device (torch {torch.__version__})"
            )
        for stage in (self.global_stage, *self.local_stages):
            stage.net.to(device)
        return self

    @torch.inference_mode()
    def predict(
        self,
        image: np.ndarray | torch.Tensor | StreamedVolume,
        affine: np.ndarray,
        keep_global_view: bool = False,
    ) -> Prediction:
        """The landmarks of one image (C, *spatial) with its voxel -> world affine; a gzip NIfTI volume
        still being inflated (:func:`~landmark_lit.data.streamed.open_streamed`) is resampled for every
        stage in one pass as its planes arrive.

        Raises:
            InputError: the model cannot run on this image (see :func:`check_image`).
        """
        g, streamed = self.global_stage, isinstance(image, StreamedVolume)
        resampled = streamed_input(image, affine, [g, *self.local_stages]) if streamed else None
        x0, x, aff = global_input(g, image, affine, resampled)
        device = network_device(g.net)
        scale = torch.as_tensor(spacing_of(aff), dtype=torch.float32, device=device)
        whole = self.mirror if self.mirror is not None and self.mirror.whole else None
        coords, spread, posterior, out, gap = decode_stage(g, x[None].to(device), scale, whole)
        global_estimate = stage_estimate(coords, spread, posterior, gap, aff)
        estimate, shift = refine_in_turn(
            self.local_stages, x0, affine, global_estimate, self.settings, resampled
        )
        with record_function("scoring"):
            confidence, flagged, radius, features = self.score(estimate, global_estimate, shift)
        return Prediction(
            world=estimate.world,
            voxel=world_to_voxel(estimate.world, affine),
            confidence=confidence,
            flagged=flagged,
            spread_mm=estimate.spread_mm,
            posterior=estimate.posterior,
            shift_mm=shift,
            global_estimate=global_estimate,
            radius_mm=radius,
            features=features,
            global_view=GlobalView(out, x, aff) if keep_global_view else None,
        )

    def score(
        self, estimate: StageEstimate, global_estimate: StageEstimate, shift_mm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Confidence (K,), flagged (K,), radius_mm (K,) and the cues (K, F) of a final answer
        (:func:`~landmark_lit.inference.scoring.score_landmarks`); the first call warns about the calibration."""
        last = self.local_stage or self.global_stage
        if not self._warned:
            self._warned = True
            threshold = self.settings.confidence_threshold
            message = calibration_warning(self.calibration, threshold, self.pipeline(), last.path)
            if message:
                log.warning("%s", message)
        spacing, cal = float(np.mean(last.meta.spacing)), self.calibration
        threshold, scale = self.confidence_threshold, self.confidence_scale
        return score_landmarks(
            estimate, global_estimate, shift_mm, spacing, self.landmark_names, cal, threshold, scale
        )
