"""Spatial and intensity preprocessing that keeps landmarks exactly attached to the image.

Landmarks travel as (K, D) voxel coordinates of the current array. Resampling goes through MONAI's
``Spacing`` on a ``MetaTensor``; the landmark voxel coordinates in the new grid follow from the two affines
(world position is unchanged by resampling), so image and landmarks cannot drift apart.
"""

from __future__ import annotations

import concurrent.futures
import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from monai.data import MetaTensor
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import GaussianSmooth, HistogramNormalize, NormalizeIntensity, Spacing
from nibabel.affines import apply_affine
from torch import Tensor

from landmark_lit.data.crops import crop_or_pad


def voxel_to_world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(..., D) voxel indices -> world mm through a (D + 1, D + 1) affine. NaN stays NaN."""
    return apply_affine(np.asarray(affine, dtype=np.float64), np.asarray(points, dtype=np.float64))


def batch_voxel_to_world(points: Tensor, affine: Tensor) -> Tensor:
    """:func:`voxel_to_world` of a batch in torch: (B, K, D) voxel indices with per-item affines
    (B, D + 1, D + 1) -> (B, K, D) world mm, float64."""
    d = points.shape[-1]
    a = affine.to(torch.float64)
    return points.to(torch.float64) @ a[:, :d, :d].transpose(1, 2) + a[:, None, :d, d]


def world_to_voxel(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(..., D) world mm -> voxel indices of the image with this affine. NaN stays NaN."""
    return apply_affine(np.linalg.inv(np.asarray(affine, dtype=np.float64)), np.asarray(points, np.float64))


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (D,) in mm: the column norms of the affine's linear part."""
    a = np.asarray(affine, dtype=np.float64)
    return np.linalg.norm(a[:-1, :-1], axis=0)


def resample_to_spacing(
    image: np.ndarray | Tensor,
    affine: np.ndarray,
    spacing: float | Sequence[float],
    mode: str = "bilinear",
    antialias: bool = True,
    contiguous: bool = True,
) -> tuple[Tensor, np.ndarray]:
    """Resample (C, *spatial) to a new voxel spacing (mm), keeping orientation and the first voxel's centre.

    With ``antialias``, axes that are down-sampled by a factor f are first smoothed with a Gaussian of
    sigma (f - 1) / 2 voxels (as skimage does), so thin structures do not alias away.

    The result is that of MONAI's ``GaussianSmooth`` (zero padding, erf kernel truncated at 4 sigma)
    followed by ``Spacing`` (bilinear, zero padding): :func:`resample_to_spacing_monai`. Because the new
    grid keeps the image's axes, both steps are separable, and bilinear mode applies them as one sparse
    (output x input) matrix per axis (:func:`axis_resampling_matrix`): 30-80 times faster on a whole
    cephalogram than filtering every input pixel, equal to float rounding (tested). Other modes use MONAI.

    Returns the float32 tensor and its new affine; with ``contiguous=False`` the tensor may be a view in
    the input's memory order (no copy; a Fortran-ordered volume stays so).
    """
    x, target, factor = _resampling(image, affine, spacing)
    if np.allclose(factor, 1.0, rtol=1e-6, atol=1e-9):
        return x.float(), np.asarray(affine, dtype=np.float64)
    if mode != "bilinear":
        return resample_to_spacing_monai(x.float(), affine, spacing, mode, antialias)
    d = x.ndim - 1
    sigma = [float(max(0.0, (f - 1.0) / 2.0)) if antialias else 0.0 for f in factor]
    mats = [
        None
        if np.isclose(factor[a], 1.0, rtol=1e-6) and sigma[a] == 0.0
        else axis_resampling_matrix(x.shape[a + 1], float(factor[a]), sigma[a])
        for a in range(d)
    ]
    channels = [_resample_separable(c, mats) for c in x]
    x = channels[0][None] if len(channels) == 1 else torch.stack(channels)
    return (x.contiguous() if contiguous else x), resampled_affine(affine, spacing)


def resampled_affine(affine: np.ndarray, spacing: float | Sequence[float]) -> np.ndarray:
    """The affine of an image of ``affine`` resampled to ``spacing`` mm by :func:`resample_to_spacing`
    (axes kept, the first voxel's centre kept)."""
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    d = len(new_affine) - 1
    factor = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (d,)) / spacing_of(affine)
    new_affine[:d, :d] = new_affine[:d, :d] * factor[None, :]
    return new_affine


def _resample_separable(x: Tensor, mats: Sequence[Tensor | None]) -> Tensor:
    """One channel (*spatial) through one sparse (out x in) matrix per axis (None: unchanged), reading
    memory in order whatever the layout (a NIfTI volume is stored the other way round, Fortran order).

    Axes are taken in memory order. A plane (2D) is ``W0 @ X``, then ``W1`` on the rows of its
    transpose (a copy of the smaller intermediate: sparse products read a transposed view slowly). A
    volume is resampled plane by plane (the planes along the outermost axis are contiguous; integers
    are converted there, a plane at a time), then along the outermost axis as one product over the
    planes' voxels (that axis first when it leaves the smaller intermediate). No step copies the whole
    image (experiments/bench/RESULTS.md, issue 23). Returns the result in the input's axis order (a
    view, not contiguous in general)."""
    order = spatial_memory_order(x[None])  # logical axes from the outermost in memory
    data = x.permute(*order).contiguous()  # a view when x is dense in any axis order
    mem = [mats[a] for a in order]
    if data.ndim == 2:
        w0, w1 = mem
        data = data.float()  # an integer image (a CT's int16) is converted one plane at a time
        if w0 is not None:
            data = torch.sparse.mm(w0, data)
        if w1 is not None:  # the rows of the transposed copy, transposed back (a view)
            data = torch.sparse.mm(w1, data.t().contiguous()).t()
    else:
        w0, plane = mem[0], mem[1:]
        n0, n1, n2 = data.shape
        m0, m1, m2 = (n if w is None else w.shape[0] for n, w in zip(data.shape, mem, strict=True))
        outer_first = w0 is not None and m0 * n1 * n2 < n0 * m1 * m2
        if outer_first or not any(w is not None for w in plane):
            data = data.float()
        if outer_first:
            data = torch.sparse.mm(w0, data.reshape(n0, -1)).reshape(m0, n1, n2)
        if any(w is not None for w in plane):
            out = torch.empty((data.shape[0], m1, m2), dtype=torch.float32)

            def planes(rows: range) -> None:
                for i in rows:
                    out[i] = _resample_separable(data[i], plane)

            split_over_threads(planes, data.shape[0])
            data = out
        if w0 is not None and not outer_first:
            data = torch.sparse.mm(w0, data.reshape(n0, -1)).reshape(m0, m1, m2)
    return data.permute(*(order.index(a) for a in range(len(order))))


def split_over_threads(
    fn: Callable[[range], None], n: int, threads: int | None = None, interleaved: bool = False
) -> None:
    """``fn`` over 0..n-1, one range per thread (torch's threads unless given; torch's operators release the
    GIL, and the small products of one plane would not use a second thread on their own): contiguous
    ranges, or with ``interleaved`` thread t takes t, t + T, t + 2T, ... (each follows a reader plane by
    plane: :mod:`landmark_lit.data.streamed`)."""
    threads = min(
        torch.get_num_threads() if threads is None else threads, n if interleaved else max(n // 16, 1)
    )
    if threads <= 1:
        fn(range(n))
        return
    bounds = [int(b) for b in np.linspace(0, n, threads + 1).round()]
    parts = [range(t, n, threads) if interleaved else range(bounds[t], bounds[t + 1]) for t in range(threads)]
    inference = torch.is_inference_mode_enabled()  # thread-local: the workers take the caller's

    def run(rows: range) -> None:
        with torch.inference_mode(inference):
            fn(rows)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(run, rows) for rows in parts]:
            done.result()


def spatial_memory_order(x: Tensor) -> list[int]:
    """The spatial axes of ``x`` (C, *spatial), 0-based, from the outermost in memory (largest stride) to
    the innermost: [0, 1, 2] for a C-ordered array, [2, 1, 0] for a volume in Fortran order (nibabel's)."""
    strides = x.stride()[1:]
    return sorted(range(x.ndim - 1), key=lambda a: (-strides[a], a))


def value_range(x: np.ndarray | Tensor) -> tuple[float, float]:
    """(min, max) of all values, reduced in memory order: torch's reduction of a Fortran-ordered volume
    (how nibabel returns NIfTI data) is two orders of magnitude slower than of the same memory read in order."""
    if not isinstance(x, Tensor):
        return float(np.min(x)), float(np.max(x))
    if x.ndim > 1:
        x = x.permute(0, *(a + 1 for a in spatial_memory_order(x)))
    lo, hi = torch.aminmax(x)
    return float(lo), float(hi)


# integer images stay as stored until resampled (load_image(..., integers=True): a CT's int16)
INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32)


def image_tensor(image: np.ndarray | Tensor) -> Tensor:
    """The image as a tensor without copying where it can: 8 to 32-bit integers as they are, anything
    else float32. Resampling converts integers one plane at a time."""
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    return x if x.dtype in INTEGER_DTYPES else x.float()


def _resampling(
    image: np.ndarray | Tensor, affine: np.ndarray, spacing: float | Sequence[float]
) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """The tensor (:func:`image_tensor`), the target spacing (D,) and the factor target / current spacing (D,)."""
    x = image_tensor(image)
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (x.ndim - 1,))
    return x, target, target / spacing_of(affine)


@functools.lru_cache(maxsize=64)
def axis_resampling_matrix(n_in: int, factor: float, sigma: float) -> Tensor:
    """Sparse (n_out, n_in) float32 CSR matrix: Gaussian smoothing, then linear interpolation, on one axis.

    Output voxel i samples input position i * factor (first voxel centres coincide);
    ``n_out = round((n_in - 1) / factor + 1)`` as MONAI's ``Spacing`` computes it. Both steps pad with zeros,
    as MONAI's ``GaussianSmooth`` and ``Spacing(padding_mode="zeros")`` do.
    """
    n_out = int(np.round((n_in - 1) / factor + 1.0))  # numpy rounds halves to even, as MONAI does
    pos = np.arange(n_out, dtype=np.float64) * factor
    j0 = np.floor(pos).astype(np.int64)
    frac = pos - j0
    taps_j = np.stack([j0, j0 + 1], 1)  # (n_out, 2) interpolation taps
    taps_w = np.stack([1.0 - frac, frac], 1)
    if sigma > 0.0:
        kernel = gaussian_1d(torch.tensor(sigma), truncated=4.0, approx="erf").double().numpy()
        offsets = np.arange(len(kernel)) - len(kernel) // 2
    else:
        kernel, offsets = np.ones(1), np.zeros(1, dtype=np.int64)
    # the smoothing value at j is sum_o kernel[o] x[j + o] (zeros outside); interpolation taps outside the
    # input are zeros too, so they contribute nothing
    inside = (taps_j >= 0) & (taps_j < n_in)
    rows = np.broadcast_to(np.arange(n_out)[:, None, None], (n_out, 2, len(kernel)))
    cols = taps_j[:, :, None] + offsets[None, None, :]
    vals = taps_w[:, :, None] * kernel[None, None, :] * inside[:, :, None]
    keep = (cols >= 0) & (cols < n_in) & (vals != 0.0)
    matrix = scipy.sparse.coo_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n_out, n_in)).tocsr()
    matrix.sum_duplicates()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": sparse @ dense is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
        )


def resample_to_spacing_monai(
    image: np.ndarray | Tensor,
    affine: np.ndarray,
    spacing: float | Sequence[float],
    mode: str = "bilinear",
    antialias: bool = True,
) -> tuple[Tensor, np.ndarray]:
    """:func:`resample_to_spacing` done with MONAI's ``GaussianSmooth`` and ``Spacing`` (any mode)."""
    x, target, factor = _resampling(image, affine, spacing)
    x = x.float()
    if antialias and np.any(factor > 1.0 + 1e-6):
        sigma = [float(max(0.0, (f - 1.0) / 2.0)) for f in factor]
        x = GaussianSmooth(sigma=sigma)(x)
        x = x.as_tensor() if isinstance(x, MetaTensor) else x
    mt = MetaTensor(x, affine=torch.as_tensor(np.asarray(affine), dtype=torch.float64))
    out = Spacing(pixdim=tuple(target.tolist()), mode=mode, padding_mode="zeros")(mt)
    return out.as_tensor().float(), out.affine.numpy().astype(np.float64)


INTENSITY_METHODS = ("zscore", "histeq", "none")


def normalize_intensity(image: Tensor, method: str = "zscore") -> Tensor:
    """Per-image intensity normalisation (MONAI transforms).

    "zscore": zero mean, unit variance per channel; "histeq": histogram equalisation (as the paper does for
    cephalograms) followed by "zscore"; "none": unchanged.
    """
    if method not in INTENSITY_METHODS:
        raise ValueError(f"unknown intensity normalisation {method!r} (expected one of {INTENSITY_METHODS})")
    if method == "none":
        return image
    if method == "histeq":
        image = equalize_histogram(image)
    elif image.shape[0] > 1:  # channel by channel, MONAI writes into its input: never the caller's
        image = torch.as_tensor(image).clone()
    # one channel: the same statistics as channel-wise, and a new tensor
    out = NormalizeIntensity(channel_wise=image.shape[0] > 1)(image)
    return out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)


def equalize_histogram(image: Tensor, num_bins: int = 256) -> Tensor:
    """Histogram equalisation to [0, 1]: MONAI's ``HistogramNormalize(num_bins, min=0, max=1)`` computed in
    torch (a histogram of ``num_bins`` equal bins over the image's range, its normalised cumulative sum
    interpolated linearly between the bins' centres). The same numbers to float rounding (tested), about
    ten times faster on a cephalogram than MONAI's numpy path, which was most of a prediction's local
    preprocessing (``experiments/bench/RESULTS.md``, issue 23). A constant image goes to MONAI."""
    x = torch.as_tensor(image, dtype=torch.float32)
    histogram = histogram_cdf(x, num_bins)
    if histogram is None:
        return torch.as_tensor(HistogramNormalize(num_bins=num_bins, min=0, max=1)(x), dtype=torch.float32)
    return apply_histogram_cdf(x, *histogram)


def histogram_cdf(x: Tensor, num_bins: int = 256) -> tuple[float, float, Tensor] | None:
    """(lo, hi, cum): the range of ``x`` and its normalised cumulative histogram of ``num_bins`` equal
    bins (bin j holds [j, j + 1) after scaling, the maximum the last bin); None for a constant image."""
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return None
    scaled = x.sub(lo).mul_(num_bins / (hi - lo))
    # (through int32: a float -> int64 conversion is several times slower here)
    bins = scaled.to(torch.int32).clamp_(max=num_bins - 1).long()
    cum = torch.bincount(bins.flatten(), minlength=num_bins).double().cumsum(0)
    return lo, hi, ((cum - cum[0]) / (cum[-1] - cum[0])).float()


def apply_histogram_cdf(x: Tensor, lo: float, hi: float, cum: Tensor) -> Tensor:
    """The equalised values of ``x`` (any part of the image ``cum`` was measured on): the cumulative
    histogram interpolated linearly between the bins' centres, as np.interp (constant beyond the first
    and the last)."""
    num_bins = len(cum)
    pos = x.sub(lo).mul_(num_bins / (hi - lo)).sub_(0.5).clamp_(0, num_bins - 1)
    flat = pos.to(torch.int32).clamp_(max=num_bins - 2).reshape(-1)  # pos >= 0: truncation is the floor
    # cum[i] + slope[i] (pos - i) as offset[i] + slope[i] pos: two int32 lookups, no int64 index (several
    # times faster on a cephalogram than torch.take, experiments/bench/RESULTS.md)
    slope = cum[1:] - cum[:-1]
    offset = cum[:-1] - slope * torch.arange(num_bins - 1, dtype=cum.dtype)
    out = offset.index_select(0, flat).view(pos.shape)  # in pos's logical order, whatever its layout
    return out.addcmul_(slope.index_select(0, flat).view(pos.shape), pos)


def pad_to_min_size(image: Tensor, min_size: int | Sequence[int] | None) -> Tensor:
    """Zero-pad (C, *spatial) at the far end of every axis shorter than ``min_size`` voxels.

    Far-end padding keeps voxel 0 in place, so the affine and landmark voxel coordinates are unchanged
    (the paper pads the 60 coronal slices of its olfactory MR scans this way). None: unchanged.
    """
    if min_size is None:
        return image
    shape = image.shape[1:]
    target = [
        max(int(n), int(m)) for n, m in zip(shape, np.broadcast_to(min_size, (len(shape),)), strict=True)
    ]
    return image if list(shape) == target else crop_or_pad(image, [0] * len(shape), target)


def match_channels(image: np.ndarray | Tensor, channels: int | None) -> np.ndarray | Tensor:
    """Average a 2D RGB / RGBA picture (alpha dropped) to one grey channel when one is expected; else check
    the channel count. A 3D image with several channels (e.g. a 4D NIfTI) is not averaged: an error."""
    c = image.shape[0]
    if channels is None or c == channels:
        return image
    if channels == 1 and c in (3, 4) and image.ndim == 3:
        return (
            image[:3].mean(0, keepdims=True)
            if isinstance(image, np.ndarray)
            else image[:3].mean(0, keepdim=True)
        )
    what = " (a 4D image?)" if image.ndim == 4 else ""
    raise ValueError(f"the model expects {channels} channel(s), the image has {c}{what}")


@dataclass
class Preprocessing:
    """What turns a loaded image into a network input at one stage's working spacing.

    Attributes:
        spacing: working voxel spacing in mm (a number for isotropic, or one per axis).
        intensity: per-image normalisation, "zscore", "histeq" or "none".
        antialias: Gaussian pre-smoothing on down-sampled axes.
        channels: channels the network expects; an RGB(A) image is averaged to grey when it expects 1.
        min_size: after resampling, axes shorter than this many working voxels (a number, or one per
            axis) are zero-padded at the far end, after intensity normalisation, so the padding is 0 in
            the network input; the affine and landmark voxel coordinates do not change. None: no padding.
    """

    spacing: float | Sequence[float]
    intensity: str = "zscore"
    antialias: bool = True
    channels: int | None = None
    min_size: int | Sequence[int] | None = None

    def __call__(self, image: np.ndarray | Tensor, affine: np.ndarray) -> tuple[Tensor, np.ndarray]:
        """(C, *spatial) image + affine -> normalised image at the working spacing + its affine."""
        image = match_channels(image, self.channels)
        return self.finish(*resample_to_spacing(image, affine, self.spacing, antialias=self.antialias))

    def finish(self, x: Tensor, affine: np.ndarray) -> tuple[Tensor, np.ndarray]:
        """The rest after resampling: the working image (C, *spatial) normalised and padded, C-ordered."""
        x = normalize_intensity(x, self.intensity)
        return pad_to_min_size(x, self.min_size).contiguous(), affine

    @property
    def resampling(self) -> tuple[tuple[float, ...], bool]:
        """(spacing per axis or one, antialias): stages with equal ones share the resampled image."""
        return tuple(float(v) for v in np.atleast_1d(self.spacing)), bool(self.antialias)


def mirror_permutation(pairs: Sequence[Sequence[int]], num_landmarks: int) -> list[int]:
    """Landmark order after a left-right mirror that swaps the index ``pairs``: row k of the mirrored
    landmarks is row perm[k] (an involution). The one rule of the training flip
    (:class:`~landmark_lit.data.augment.RandomFlip`) and the test-time mirror
    (:class:`~landmark_lit.inference.settings.MirrorAverage`)."""
    perm = list(range(num_landmarks))
    for i, j in pairs:
        if not isinstance(i, int) or not isinstance(j, int):
            raise ValueError(f"flip pair {[i, j]} names landmarks: resolve it with for_landmarks(names)")
        if max(i, j) >= num_landmarks:
            raise ValueError(f"flip pair {[i, j]} out of range for {num_landmarks} landmarks")
        perm[i], perm[j] = j, i
    return perm
