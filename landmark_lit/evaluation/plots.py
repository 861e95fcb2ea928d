"""Evaluation figures: SDR curve, error box plot per landmark, overlays of the worst cases. PNG, atomic.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so importing this module changes no
global backend and works without a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from landmark_lit.data.transforms import world_to_voxel
from landmark_lit.metrics import PAPER_THRESHOLDS_MM, sdr
from landmark_lit.utils import atomic_path

REFERENCE_STYLE = {"marker": "+", "color": "tab:blue", "markersize": 12, "markeredgewidth": 2}
PREDICTION_STYLE = {"marker": "x", "color": "magenta", "markersize": 9, "markeredgewidth": 2}


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_sdr_curve(
    errors_by_run: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    thresholds: Sequence[float] = PAPER_THRESHOLDS_MM,
) -> None:
    """SDR (%) against threshold (mm), one line per run.

    Args:
        errors_by_run: run name -> errors in mm of any shape (NaN = missing, ignored).
        path: output PNG.
        thresholds: thresholds in mm on the x axis.
    """
    fig = _new_figure(6, 4)
    ax = fig.add_subplot()
    for name, errors in errors_by_run.items():
        rates = sdr(torch.as_tensor(np.asarray(errors, dtype=np.float64)), thresholds).numpy()
        ax.plot(thresholds, rates, marker="o", label=name)
    ax.set(xlabel="threshold (mm)", ylabel="SDR (%)", ylim=(0, 101), title="Success detection rate")
    ax.grid(True, alpha=0.3)
    if errors_by_run:
        ax.legend(loc="lower right")
    _save(fig, path)


def plot_error_boxplot(errors: np.ndarray, names: Sequence[str], path: str | os.PathLike) -> None:
    """Box plot of radial errors per landmark.

    Args:
        errors: (N, K) errors in mm, NaN = missing (left out).
        names: K landmark names.
        path: output PNG.
    """
    errors = np.asarray(errors, dtype=np.float64)
    columns = [errors[:, k][np.isfinite(errors[:, k])] for k in range(errors.shape[1])]
    fig = _new_figure(max(6.0, 0.45 * len(names) + 1.5), 4)
    ax = fig.add_subplot()
    ax.boxplot(columns, showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), list(names), rotation=90 if len(names) > 8 else 0)
    ax.set(ylabel="radial error (mm)", title="Radial error per landmark")
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)


def _show(ax: Axes, plane: np.ndarray, spacing: tuple[float, float], origin: str) -> None:
    """Show a plane (axis a, axis b) with axis a horizontal, axis b vertical and physical aspect."""
    finite = plane[np.isfinite(plane)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    ax.imshow(
        plane.T,
        cmap="gray",
        vmin=low,
        vmax=high if high > low else low + 1,
        origin=origin,
        aspect=spacing[1] / spacing[0],
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def plot_overlay(
    image: np.ndarray,
    affine: np.ndarray,
    reference_mm: np.ndarray,
    prediction_mm: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Image with a reference landmark (blue +) and a prediction (magenta x).

    For a 2D image the whole image is shown (array axis 0 horizontal, axis 1 downward, which shows
    MONAI-loaded PNGs upright). For a 3D image, three orthogonal slices through the reference landmark are
    shown, with both points projected onto each slice.

    Args:
        image: (C, *spatial) image array; channels are averaged.
        affine: (D+1, D+1) voxel -> world mm.
        reference_mm: (D,) reference landmark, world mm.
        prediction_mm: (D,) predicted landmark, world mm.
        path: output PNG.
        title: figure title (e.g. case, landmark name and error).
    """
    volume = np.asarray(image, dtype=np.float64).mean(axis=0)
    dims = volume.ndim
    if dims not in (2, 3) or np.asarray(affine).shape != (dims + 1, dims + 1):
        raise ValueError(
            f"image spatial shape {volume.shape} does not match affine {np.asarray(affine).shape}"
        )
    ref, pred = world_to_voxel(np.stack([reference_mm, prediction_mm]), affine)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:-1, :-1], axis=0)

    if dims == 2:
        fig = _new_figure(6, 6 * volume.shape[1] * spacing[1] / max(volume.shape[0] * spacing[0], 1e-9))
        ax = fig.add_subplot()
        _show(ax, volume, (spacing[0], spacing[1]), origin="upper")
        ax.plot(ref[0], ref[1], linestyle="none", label="reference", **REFERENCE_STYLE)
        ax.plot(pred[0], pred[1], linestyle="none", label="prediction", **PREDICTION_STYLE)
        ax.legend(loc="upper right", fontsize=8)
    else:
        fig = _new_figure(12, 4.4)
        centre = np.clip(np.rint(ref).astype(int), 0, np.array(volume.shape) - 1)
        for n, axis in enumerate(range(3)):
            a, b = [d for d in range(3) if d != axis]
            plane = np.take(volume, centre[axis], axis=axis)  # axes (a, b)
            ax = fig.add_subplot(1, 3, n + 1)
            _show(ax, plane, (spacing[a], spacing[b]), origin="lower")
            ax.plot(ref[a], ref[b], linestyle="none", label="reference", **REFERENCE_STYLE)
            ax.plot(pred[a], pred[b], linestyle="none", label="prediction", **PREDICTION_STYLE)
            ax.set_title(f"axis {axis} = {centre[axis]}", fontsize=9)
            ax.set_xlim(-0.5, volume.shape[a] - 0.5)
            ax.set_ylim(-0.5, volume.shape[b] - 0.5)
        ax.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_vector_field(
    image: np.ndarray,
    displacement: np.ndarray,
    posterior: np.ndarray,
    stride: int,
    path: str | os.PathLike,
    landmark: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    threshold: float = 0.5,
    title: str = "",
    slice_at: np.ndarray | None = None,
) -> int:
    """One landmark's displacement votes on the cell grid of a 2D image (the paper's Fig. 5 form), or of
    the slice of cells of a 3D image through a point (axes 0 and 1 in the plane).

    An arrow from every cell centre to where the cell places the landmark; cells whose posterior exceeds
    ``threshold`` are drawn in colour (the votes that count), the others in grey.

    Args:
        image: (H, W) working image (array axis 0 horizontal, axis 1 downward, as in :func:`plot_overlay`),
            or (H, W, Z) for a 3D image.
        displacement: (2, gh, gw) displacement in working voxels (after the inverse log transform), or
            (3, gh, gw, gz).
        posterior: (gh, gw) posterior probabilities in [0, 1], or (gh, gw, gz).
        stride: the network's stride (cell g covers voxels g*stride .. (g+1)*stride - 1).
        path: output PNG.
        landmark: optional (2,) reference position in working voxels (blue +).
        prediction: optional (2,) decoded position in working voxels (magenta x).
        threshold: posterior above which a cell is marked.
        title: figure title.
        slice_at: 3D only: the point (voxels) whose slice of cells is drawn; default ``landmark``, else
            ``prediction``.

    Returns:
        The number of marked cells.
    """
    image = np.asarray(image, dtype=np.float64)
    disp = np.asarray(displacement, dtype=np.float64)
    post = np.asarray(posterior, dtype=np.float64)
    if image.ndim == 3:
        point = next((p for p in (slice_at, landmark, prediction) if p is not None), None)
        if point is None:
            raise ValueError(
                "a 3D vote field needs a point to slice through (slice_at, landmark or prediction)"
            )
        cell = int(np.clip(np.floor(point[2] / stride), 0, post.shape[2] - 1))
        z = int(np.clip(round(cell * stride + (stride - 1) / 2), 0, image.shape[2] - 1))
        image, disp, post = image[:, :, z], disp[:2, :, :, cell], post[:, :, cell]
    if image.ndim != 2 or disp.shape[0] != 2 or disp.shape[1:] != post.shape:
        raise ValueError(
            f"expected a (H, W) image, (2, gh, gw) displacement and (gh, gw) posterior, got "
            f"{image.shape}, {disp.shape}, {post.shape}"
        )
    centres = [np.arange(n) * stride + (stride - 1) / 2 for n in post.shape]
    cx, cy = np.meshgrid(*centres, indexing="ij")
    fig = _new_figure(6, 6 * image.shape[1] / max(image.shape[0], 1))
    ax = fig.add_subplot()
    _show(ax, image, (1.0, 1.0), origin="upper")
    on = post > threshold
    style = {"angles": "xy", "scale_units": "xy", "scale": 1.0, "width": 0.003}
    ax.quiver(cx[~on], cy[~on], disp[0][~on], disp[1][~on], color="0.6", alpha=0.6, **style)
    ax.quiver(cx[on], cy[on], disp[0][on], disp[1][on], post[on], cmap="autumn", clim=(threshold, 1), **style)
    ax.plot(
        cx[on], cy[on], "s", markersize=3, markerfacecolor="none", markeredgecolor="yellow", linestyle="none"
    )
    if landmark is not None:
        ax.plot(*np.asarray(landmark)[:2], linestyle="none", label="reference", **REFERENCE_STYLE)
    if prediction is not None:
        ax.plot(*np.asarray(prediction)[:2], linestyle="none", label="prediction", **PREDICTION_STYLE)
    if landmark is not None or prediction is not None:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(-0.5, image.shape[0] - 0.5)
    ax.set_ylim(image.shape[1] - 0.5, -0.5)
    ax.set_title(
        title or f"votes of {post.size} cells, {int(on.sum())} with posterior > {threshold:g}", fontsize=9
    )
    _save(fig, path)
    return int(on.sum())


@dataclass
class _Marks:
    """How :func:`plot_landmarks` draws landmark k on axes whose x and y are array axes a and b."""

    names: list[str]
    pred: np.ndarray
    ref: np.ndarray | None
    flags: np.ndarray
    radii: np.ndarray
    spacing: np.ndarray

    def circle(self, ax: Axes, k: int, a: int, b: int, off_mm: float = 0.0) -> None:
        """The uncertainty radius' sphere cut by the drawn plane, ``off_mm`` from the landmark."""
        from matplotlib.patches import Ellipse

        radii, pred, spacing = self.radii, self.pred, self.spacing
        r = float(np.sqrt(max(radii[k] ** 2 - off_mm**2, 0.0))) if np.isfinite(radii[k]) else 0.0
        if r > 0:
            colour = "orange" if self.flags[k] else PREDICTION_STYLE["color"]
            ax.add_patch(Ellipse((pred[k, a], pred[k, b]), 2 * r / spacing[a], 2 * r / spacing[b],
                                 fill=False, edgecolor=colour, linewidth=0.8, alpha=0.8))  # fmt: skip

    def mark(self, ax: Axes, k: int, a: int, b: int, label: bool) -> None:
        """The reference (+), the prediction (x, orange when flagged) and, with ``label``, its name."""
        ref, pred, flags = self.ref, self.pred, self.flags
        if ref is not None and np.all(np.isfinite(ref[k])):
            ax.plot(ref[k, a], ref[k, b], linestyle="none", **REFERENCE_STYLE)
        if np.all(np.isfinite(pred[k])):
            style = {**PREDICTION_STYLE, "color": "orange" if flags[k] else PREDICTION_STYLE["color"]}
            ax.plot(pred[k, a], pred[k, b], linestyle="none", **style)
            if label:
                ax.annotate(
                    self.names[k] + (" (?)" if flags[k] else ""), (pred[k, a], pred[k, b]), xytext=(4, 4),
                    textcoords="offset points", color=style["color"], fontsize=7,
                )  # fmt: skip


def plot_landmarks(
    image: np.ndarray,
    affine: np.ndarray,
    names: Sequence[str],
    prediction_mm: np.ndarray,
    path: str | os.PathLike,
    reference_mm: np.ndarray | None = None,
    flagged: np.ndarray | None = None,
    landmark: int | None = None,
    title: str = "",
    radius_mm: np.ndarray | None = None,
) -> None:
    """Predicted landmarks (magenta x, named; flagged ones in orange) and optional references (blue +);
    with ``radius_mm``, each landmark's uncertainty radius as a circle (its trace on the slice in 3D).

    2D: the whole image with every landmark. 3D: three orthogonal slices through landmark ``landmark``
    (its prediction), that landmark named, the others not drawn.

    Args:
        image: (C, *spatial) image as read; channels are averaged.
        affine: (D+1, D+1) voxel -> world mm.
        names: K landmark names.
        prediction_mm: (K, D) world mm (NaN rows skipped).
        path: output PNG.
        reference_mm: optional (K, D) reference landmarks, world mm.
        flagged: optional (K,) bool, landmarks whose confidence is below the threshold.
        landmark: the landmark of a 3D picture (required for 3D).
        title: figure title.
        radius_mm: optional (K,) uncertainty radii in mm (NaN: none drawn).
    """
    volume = np.asarray(image, dtype=np.float64).mean(axis=0)
    dims = volume.ndim
    affine = np.asarray(affine, dtype=np.float64)
    if dims not in (2, 3) or affine.shape != (dims + 1, dims + 1):
        raise ValueError(f"image spatial shape {volume.shape} does not match affine {affine.shape}")
    pred = world_to_voxel(np.asarray(prediction_mm, dtype=np.float64), affine)
    ref = (
        world_to_voxel(np.asarray(reference_mm, dtype=np.float64), affine)
        if reference_mm is not None
        else None
    )
    flags = np.zeros(len(names), bool) if flagged is None else np.asarray(flagged, bool)
    spacing = np.linalg.norm(affine[:-1, :-1], axis=0)
    radii = np.full(len(names), np.nan) if radius_mm is None else np.asarray(radius_mm, np.float64)

    marks = _Marks(list(names), pred, ref, flags, radii, spacing)
    circle, mark = marks.circle, marks.mark

    if dims == 2:
        fig = _new_figure(8, 8 * volume.shape[1] * spacing[1] / max(volume.shape[0] * spacing[0], 1e-9))
        ax = fig.add_subplot()
        _show(ax, volume, (spacing[0], spacing[1]), origin="upper")
        for k in range(len(names)):
            mark(ax, k, 0, 1, True)
            if np.all(np.isfinite(pred[k])):
                circle(ax, k, 0, 1)
    else:
        if landmark is None:
            raise ValueError("a 3D picture shows one landmark: pass landmark=k")
        fig = _new_figure(12, 4.4)
        centre = np.clip(np.rint(np.nan_to_num(pred[landmark])).astype(int), 0, np.array(volume.shape) - 1)
        for n, axis in enumerate(range(3)):
            a, b = [d for d in range(3) if d != axis]
            ax = fig.add_subplot(1, 3, n + 1)
            _show(ax, np.take(volume, centre[axis], axis=axis), (spacing[a], spacing[b]), origin="lower")
            mark(ax, landmark, a, b, n == 0)
            if np.all(np.isfinite(pred[landmark])):
                circle(ax, landmark, a, b, abs(centre[axis] - pred[landmark, axis]) * spacing[axis])
            ax.set_title(f"axis {axis} = {centre[axis]}", fontsize=9)
            ax.set_xlim(-0.5, volume.shape[a] - 0.5)
            ax.set_ylim(-0.5, volume.shape[b] - 0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_confidence_curve(
    errors: np.ndarray,
    confidence: np.ndarray,
    failure_mm: float,
    path: str | os.PathLike,
    flagged: np.ndarray | None = None,
) -> None:
    """Share of landmarks flagged (lowest confidence first) against the share of failures (error >
    ``failure_mm``) among them, with the diagonal of a score that knows nothing and the stored
    threshold's point (``flagged``)."""
    err = np.asarray(errors, np.float64).reshape(-1)
    conf = np.asarray(confidence, np.float64).reshape(-1)
    ok = np.isfinite(err) & np.isfinite(conf)
    err, conf = err[ok], conf[ok]
    failed = err > failure_mm
    fig = _new_figure(5, 4.5)
    ax = fig.add_subplot()
    if failed.any() and len(err):
        order = np.argsort(conf, kind="stable")
        share = np.arange(1, len(err) + 1) / len(err)
        caught = np.cumsum(failed[order]) / failed.sum()
        ax.plot(np.r_[0, share] * 100, np.r_[0, caught] * 100, label="confidence")
        if flagged is not None:
            f = np.asarray(flagged, bool).reshape(-1)[ok]
            ax.plot([100 * f.mean()], [100 * (f & failed).sum() / failed.sum()], "o", color="orange",
                    label="stored threshold")  # fmt: skip
    ax.plot([0, 100], [0, 100], linestyle=":", color="grey", label="chance")
    ax.set_xlabel("landmarks flagged (%)")
    ax.set_ylabel(f"errors > {failure_mm:g} mm caught (%)")
    ax.set_title(f"{int(failed.sum())} failures of {len(err)} landmarks", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
