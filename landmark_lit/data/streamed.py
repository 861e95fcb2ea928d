"""A gzip NIfTI volume resampled while it is inflated.

Inflating a compressed CT (a 512 x 512 x 400 int16 volume is about 110 MB of gzip) takes about as long
as everything else the pipeline does with it. A NIfTI stores its volume with the first axis fastest, so
the file is a sequence of planes along its last axis, and the pipeline's resampling goes plane by plane
in that order anyway (:func:`~landmark_lit.data.transforms.resample_to_spacing`). :func:`open_streamed`
reads the header, then inflates the rest in a background thread (ISA-L's and zlib's inflaters release
the GIL) into the final array; :meth:`StreamedVolume.resample` takes each plane as soon as it is there
and resamples it to every working spacing the pipeline needs (the global and each local stage's) in the
same loop, then the last axis once per spacing. Reading then overlaps resampling, and the volume is
read once for all stages instead of once per stage. The results equal
:func:`~landmark_lit.data.transforms.resample_to_spacing` on the volume read whole, to float rounding
(tests/data/test_streamed.py); experiments/bench/RESULTS.md has the times.

Only a plain single-volume NIfTI-1/2 in gzip is streamed (any numeric type, scaled or not); anything
else returns None and is read whole by :func:`~landmark_lit.data.io.load_image`.
"""

from __future__ import annotations

import importlib.util
import io
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from landmark_lit.data.io import KEPT_INTEGERS, ImageReadError
from landmark_lit.data.transforms import (
    axis_resampling_matrix,
    resampled_affine,
    spacing_of,
    split_over_threads,
)
from landmark_lit.utils import first_line

CHUNK = 1 << 20  # compressed bytes per read: about 2 MB of planes per step
HEADERS = {348: nib.Nifti1Header, 540: nib.Nifti2Header}


def _inflater() -> ModuleType:
    """python-isal's zlib (ISA-L, about three times faster) when installed, else the standard one."""
    if importlib.util.find_spec("isal") is not None:
        from isal import isal_zlib

        return isal_zlib
    return zlib


class StreamedVolume:
    """A 3D gzip NIfTI being inflated in a background thread (made by :func:`open_streamed`).

    ``shape`` (x, y, z) and ``affine`` (4 x 4, RAS, nibabel's choice of sform / qform) are known at once;
    :meth:`resample` consumes the planes as they arrive; :attr:`array` waits for the whole volume and
    returns it as :func:`~landmark_lit.data.io.load_image` would (channel first, stored integers of an
    unscaled integer file, else float32)."""

    def __init__(self, path: Path, header: Any, pieces: Iterator[bytes], head: bytes) -> None:
        self.path = path
        self.affine = np.asarray(header.get_best_affine(), dtype=np.float64)
        self.shape = tuple(int(n) for n in header.get_data_shape()[:3])
        self.dtype = header.get_data_dtype()
        slope, inter = header.get_slope_inter()
        unscaled = slope is None or (slope == 1.0 and not inter)
        self.scaling = None if unscaled else (float(slope), float(inter or 0.0))
        x, y, z = self.shape
        self._plane_bytes = x * y * self.dtype.itemsize
        self._buffer = np.empty(self._plane_bytes * z, dtype=np.uint8)
        self._filled = 0
        self._error: ImageReadError | None = None
        self._ready = threading.Condition()
        self._store(head)
        self._thread = threading.Thread(target=self._inflate, args=(pieces,), daemon=True)
        self._thread.start()

    def _store(self, data: bytes) -> None:
        n = min(len(data), len(self._buffer) - self._filled)
        self._buffer[self._filled : self._filled + n] = np.frombuffer(data, dtype=np.uint8, count=n)
        with self._ready:
            self._filled += n
            self._ready.notify_all()

    def _inflate(self, pieces: Iterator[bytes]) -> None:
        try:
            for piece in pieces:  # to the end of the file, past the data: gzip's CRC checks
                if self._filled < len(self._buffer):
                    self._store(piece)
            if self._filled < len(self._buffer):
                raise EOFError(f"the data end after {self._filled} of {len(self._buffer)} bytes")
        except Exception as exc:  # zlib / ISA-L errors, short files, I/O errors
            what = "truncated" if isinstance(exc, EOFError) else type(exc).__name__
            self._error = ImageReadError(f"{self.path}: cannot read image ({what}: {first_line(exc)})")
        finally:
            with self._ready:
                self._ready.notify_all()

    def _wait(self, planes: int) -> None:
        """Block until the first ``planes`` planes are inflated; the reader's error if it failed."""
        need = planes * self._plane_bytes
        with self._ready:
            self._ready.wait_for(lambda: self._filled >= need or self._error is not None)
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Wait for the reader to the end of the file (gzip's CRC check); its error if it failed."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def plane(self, k: int) -> Tensor:
        """Plane ``k`` along the last axis, (y, x) in memory order, float32 (scaled), once inflated."""
        self._wait(k + 1)
        x, y, _ = self.shape
        raw = self._buffer[k * self._plane_bytes : (k + 1) * self._plane_bytes].view(self.dtype)
        return torch.from_numpy(self._values(raw.reshape(y, x)))

    def _values(self, raw: np.ndarray) -> np.ndarray:
        """Stored values as float32, scaled in float64 first as nibabel scales them."""
        if self.scaling is None:
            return raw.astype(np.float32)
        return (raw.astype(np.float64) * self.scaling[0] + self.scaling[1]).astype(np.float32)

    @property
    def array(self) -> np.ndarray:
        """The whole volume (1, x, y, z), once inflated, in Fortran order as nibabel returns it."""
        self.finish()
        x, y, z = self.shape
        volume = self._buffer.view(self.dtype).reshape(z, y, x).transpose(2, 1, 0)
        if self.scaling is None and self.dtype.isnative and self.dtype.type in KEPT_INTEGERS:
            return volume[None]
        return self._values(volume)[None]

    def resample(
        self, spacings: Sequence[tuple[Any, bool]], affine: np.ndarray | None = None
    ) -> tuple[list[tuple[Tensor, np.ndarray]], tuple[float, float]]:
        """Every (spacing mm, antialias) of ``spacings`` as :func:`~landmark_lit.data.transforms.resample_to_spacing`
        with ``contiguous=False`` would give it on the whole volume ((1, *spatial) float32 in Fortran order,
        and its affine), in one pass over the planes as they are inflated; and the volume's (min, max).
        ``affine``: the volume's geometry if not the file's (a spacing given by the user)."""
        z = self.shape[2]
        affine = self.affine if affine is None else np.asarray(affine, dtype=np.float64)
        plans = [_plan(self.shape, affine, s, a) for s, a in spacings]
        outs = [torch.empty((z, *p.plane_shape), dtype=torch.float32) for p in plans]
        lo, hi = np.full(z, np.inf), np.full(z, -np.inf)

        def planes(rows: range) -> None:
            for k in rows:
                p = self.plane(k)
                lo[k], hi[k] = (float(v) for v in torch.aminmax(p))
                for plan, out in zip(plans, outs, strict=True):
                    out[k] = plan.in_plane(p)

        # the inflater keeps a core busy while it runs: one thread fewer for the planes, and each of them
        # single-threaded inside (torch's pool on every small product would contend with the inflater)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            split_over_threads(planes, z, threads - int(self._thread.is_alive()), interleaved=True)
        finally:
            torch.set_num_threads(threads)
        self.finish()
        results = [(plan.along_last(out), plan.affine) for plan, out in zip(plans, outs, strict=True)]
        return results, (float(np.min(lo)), float(np.max(hi)))


class _Plan:
    """One working spacing's resampling of a (x, y, z) volume: a sparse matrix per axis (None: unchanged)."""

    def __init__(self, mats: list[Tensor | None], shape: tuple[int, ...], affine: np.ndarray) -> None:
        self.mats, self.affine = mats, affine
        self.out_shape = tuple(n if w is None else int(w.shape[0]) for n, w in zip(shape, mats, strict=True))
        self.plane_shape = (self.out_shape[1], self.out_shape[0])  # (y, x), as the planes are stored

    def in_plane(self, plane: Tensor) -> Tensor:
        """(y, x) -> (y', x'): the first axis along the rows, the second on the transposed copy."""
        wx, wy = self.mats[0], self.mats[1]
        if wy is not None:
            plane = torch.sparse.mm(wy, plane)
        if wx is not None:
            plane = torch.sparse.mm(wx, plane.t().contiguous()).t()
        return plane

    def along_last(self, planes: Tensor) -> Tensor:
        """(z, y', x') planes -> (1, x', y', z') in Fortran order (a view), the last axis resampled."""
        wz = self.mats[2]
        if wz is not None:
            planes = torch.sparse.mm(wz, planes.reshape(planes.shape[0], -1)).reshape(-1, *planes.shape[1:])
        return planes.permute(2, 1, 0)[None]


def _plan(shape: tuple[int, ...], affine: np.ndarray, spacing: Any, antialias: bool) -> _Plan:
    """The sparse matrices :func:`~landmark_lit.data.transforms.resample_to_spacing` uses for this spacing."""
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    factor = target / spacing_of(affine)
    if np.allclose(factor, 1.0, rtol=1e-6, atol=1e-9):
        return _Plan([None, None, None], shape, np.asarray(affine, dtype=np.float64))
    sigma = [float(max(0.0, (f - 1.0) / 2.0)) if antialias else 0.0 for f in factor]
    mats = [
        None
        if np.isclose(factor[a], 1.0, rtol=1e-6) and sigma[a] == 0.0
        else axis_resampling_matrix(shape[a], float(factor[a]), sigma[a])
        for a in range(3)
    ]
    return _Plan(mats, shape, resampled_affine(affine, spacing))


def _inflated(source: Any) -> Iterator[bytes]:
    """The inflated pieces of an open gzip file of one or more members; closes it at the end."""
    with source:
        inflater, pending = _inflater().decompressobj(wbits=31), b""
        while chunk := pending or source.read(CHUNK):
            if inflater.eof:  # the member before ended: a further gzip member
                inflater = _inflater().decompressobj(wbits=31)
            yield inflater.decompress(chunk)
            pending = inflater.unused_data if inflater.eof else b""
        if not inflater.eof:
            raise EOFError("the gzip stream ends early")


def open_streamed(path: str | Path) -> StreamedVolume | None:
    """Start inflating a gzip NIfTI-1/2 holding one 3D volume; None for anything else (another format, a
    4D or 2D image, an unreadable header: :func:`~landmark_lit.data.io.load_image` reads those whole and
    reports their errors)."""
    path = Path(path)
    if not path.name.lower().endswith(".nii.gz") or not path.is_file():
        return None
    pieces = _inflated(open(path, "rb"))  # noqa: SIM115 (closed by the generator, in the reader thread)
    try:
        head = b""
        while len(head) < 540 and (piece := next(pieces, None)) is not None:
            head += piece
        header = _header(head)
        offset = 0 if header is None else int(header.get_data_offset())
        while header is not None and len(head) < offset and (piece := next(pieces, None)) is not None:
            head += piece
    except Exception:  # not gzip, a short file: the whole-file reader says what is wrong
        header = None
    if header is None:
        pieces.close()
        return None
    return StreamedVolume(path, header, pieces, head[offset:])


def _header(head: bytes) -> Any:
    """The NIfTI header at the start of ``head`` if it describes one streamable 3D volume with a finite
    affine, else None."""
    if len(head) < 348:
        return None
    size = int.from_bytes(head[:4], "little")
    size = size if size in HEADERS else int.from_bytes(head[:4], "big")
    if size not in HEADERS or len(head) < size:
        return None
    header = HEADERS[size].from_fileobj(io.BytesIO(head[:size]))
    shape = header.get_data_shape()
    dtype = header.get_data_dtype()
    single = len(shape) >= 3 and all(n == 1 for n in shape[3:]) and min(shape[:3]) > 0
    single = single and bool(np.all(np.isfinite(header.get_best_affine())))
    magic = np.asarray(header["magic"]).tobytes()
    plain = dtype.kind in "iuf" and header.get_data_offset() >= size and magic.startswith(b"n+")
    return header if single and plain else None
