"""Many images through one engine: decoding and preprocessing in a thread pool ahead of inference, results in
input order, memory bounded whatever the number of images.

* :class:`ImagePreparer` - one image source -> the network tensor (and its original size), decoding files within
  a memory budget (:class:`ssdtool.imaging.DecodeBudget`) and without a full-size RGB copy where possible;
* :class:`Prefetch` - runs the preparer on ``workers`` threads, at most ``lookahead`` images ahead of the consumer;
* :func:`ordered_outputs` - feeds the prepared tensors to ``engine.infer_stream`` (OpenVINO keeps its optimal number
  of requests in flight) and yields every input's outcome in input order.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ssdtool.errors import ImageError
from ssdtool.imaging import (
    DEFAULT_DECODE_MEMORY,
    DEFAULT_MAX_PIXELS,
    LARGE_DECODE_BYTES,
    DecodeBudget,
    ImageSource,
    decode_cost,
    decode_file,
    load_image,
    pil_to_rgb,
    preprocess,
    resize_rgb,
    resized_for_network,
    whole_for_network,
)
from ssdtool.registry import ModelEntry

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from ssdtool.backends import Engine

log = logging.getLogger("ssdtool.pipeline")


@dataclass
class Prepared:
    """An image ready for the engine: its size after EXIF rotation, the tensor, and the full-size RGB pixels when
    they were asked for (for drawing)."""

    rgb: np.ndarray | None
    width: int
    height: int
    tensor: np.ndarray | None


def source_name(source: ImageSource) -> str | None:
    """A path source as the user gave it; None for in-memory images."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None


def release_freed_memory() -> bool:
    """Give the memory that large decodes freed back to the system; True where that is possible (glibc).

    Pillow allocates a large image in blocks of a few MB; once glibc has freed one such block it raises its mmap
    threshold and serves later blocks from the heap of the thread that asked, where freed memory stays resident
    (measured: 1.3 GB left after eight 88-megapixel PNGs). ``malloc_trim(0)`` returns the free pages of every
    heap. It changes no setting; elsewhere (musl, macOS, Windows) this does nothing.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


class ImagePreparer:
    """Decodes one image source and makes the network tensor for ``form`` ("onnx", "ir" or "image": the whole
    image, for the image-input IR, which resizes inside), or, for ``form=None``,
    the network-sized 8-bit RGB pixels that every form's tensor is made from (decode once, feed several engines:
    ``preprocess(prepared.tensor, entry, form=...)``).

    Files are decoded within ``decode_memory`` bytes shared by every decode running at once (estimated from the
    header); an image estimated over :data:`ssdtool.imaging.LARGE_DECODE_BYTES` decodes on one dedicated thread,
    because the allocator keeps freed memory per thread. Without ``keep_image`` the full-size RGB copy is skipped
    (the same pixels, bit for bit).
    """

    def __init__(self, entry: ModelEntry, form: str | None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 decode_memory: int = DEFAULT_DECODE_MEMORY) -> None:
        self.entry, self.form, self.max_pixels = entry, form, max_pixels
        self.budget = DecodeBudget(decode_memory)
        self._large: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self, source: ImageSource, channel_order: str = "RGB", keep_image: bool = False) -> Prepared:
        if not isinstance(source, (str, os.PathLike)):  # arrays and PIL images: already in the caller's memory
            rgb = load_image(source, channel_order=channel_order, max_pixels=self.max_pixels)
            tensor = self._tensor(rgb)
            return Prepared(rgb if keep_image else None, int(rgb.shape[1]), int(rgb.shape[0]), tensor)

        return decode_file(Path(source), self.max_pixels, lambda image: self.decode(image, keep_image))

    def decode(self, image: PILImage.Image, keep_image: bool = False) -> Prepared:
        """An opened image (its size already checked) -> :class:`Prepared`, within the decode budget: waits while
        other decodes hold it. The image is closed on return (its full-size pixels are gone before the budget is
        released). Pillow's errors for broken data pass through (:func:`decode_file` names them for files)."""
        whole = keep_image or self.form == "image"  # full-size pixels leave the decode
        cost = decode_cost(image.width, image.height, image.mode, whole)
        if cost > LARGE_DECODE_BYTES:
            return self._large_decoder().submit(self._decode_large, image, cost, keep_image).result()
        return self._decode_within_budget(image, cost, keep_image)

    def _decode_large(self, image: PILImage.Image, cost: int, keep_image: bool) -> Prepared:
        try:
            return self._decode_within_budget(image, cost, keep_image)
        finally:
            release_freed_memory()

    def _decode_within_budget(self, image: PILImage.Image, cost: int, keep_image: bool) -> Prepared:
        # The full-size pixels live only inside the budget's hold; what leaves it is network-sized, except the kept
        # image and the image-input IR's tensor (each bounded by max_pixels, one per image in flight).
        with self.budget.hold(cost):
            from PIL import ImageOps

            try:
                ImageOps.exif_transpose(image, in_place=True)  # upright without a full-size copy
                width, height = image.size
                if self.form == "image" and not keep_image:
                    whole_tensor = whole_for_network(image, self.entry.convert.color_order)
                    if whole_tensor is not None:
                        return Prepared(None, width, height, whole_tensor)
                resized = None if keep_image or self.form == "image" else resized_for_network(image, self.entry.input)
                rgb = pil_to_rgb(image) if resized is None else None
                tensor = self._tensor(rgb if resized is None else resized)
            finally:
                image.close()
        return Prepared(rgb if keep_image else None, width, height, tensor)

    def _tensor(self, rgb: np.ndarray) -> np.ndarray:
        if self.form is None:
            return resize_rgb(rgb, self.entry.input)
        return preprocess(rgb, self.entry, form=self.form)

    def _large_decoder(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._large is None:
                self._large = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssdtool-decode-large")
            return self._large

    def close(self) -> None:
        with self._lock:
            large, self._large = self._large, None
        if large is not None:
            large.shutdown(wait=True)


class Prefetch:
    """Prepares images on ``workers`` threads, at most ``lookahead`` ahead of the consumer, handing them back in
    input order. Work starts in the constructor, before anyone waits for the engine."""

    def __init__(self, prepare: ImagePreparer, images: Iterable[ImageSource], *, channel_order: str = "RGB",
                 keep_images: bool = False, workers: int = 2, lookahead: int | None = None) -> None:
        self.prepare, self.channel_order, self.keep_images = prepare, channel_order, keep_images
        self.lookahead = max(1, lookahead if lookahead is not None else 2 * workers + 2)
        self.source = enumerate(images)
        self.exhausted = False
        self.window: deque[tuple[int, ImageSource, Future[Prepared]]] = deque()
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ssdtool-decode")
        try:
            self._fill()
        except BaseException:
            self.close()
            raise

    def _fill(self) -> None:
        while not self.exhausted and len(self.window) < self.lookahead:
            try:
                index, source = next(self.source)
            except StopIteration:
                self.exhausted = True
                return
            self.window.append((index, source, self.pool.submit(self.prepare, source, self.channel_order,
                                                                self.keep_images)))

    def __iter__(self) -> Iterator[tuple[int, ImageSource, Prepared | ImageError]]:
        while self.window:
            index, source, future = self.window.popleft()
            self._fill()
            yield index, source, self._outcome(index, source, future)

    @staticmethod
    def _outcome(index: int, source: ImageSource, future: Future[Prepared]) -> Prepared | ImageError:
        try:
            return future.result()
        except ImageError as exc:
            return exc
        except Exception as exc:  # one odd file must not end the run; say what happened instead
            log.debug("unexpected error reading %s", source_name(source), exc_info=True)
            return ImageError(f"{source_name(source) or f'image {index}'}: cannot be processed: "
                              f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


Outcome = tuple[int, ImageSource, "Prepared | ImageError", "dict[str, np.ndarray] | None"]


def ordered_outputs(engine: Engine, prefetch: Prefetch) -> Iterator[Outcome]:
    """Every input of ``prefetch`` as ``(index, source, prepared or error, outputs or None)``, in input order.

    Prepared tensors go to the engine as soon as they are ready (only the engine keeps them); an image that could
    not be prepared is yielded in its place in the order with its :class:`ImageError` and no outputs.
    """
    finished: dict[int, Outcome] = {}
    pending: dict[int, tuple[ImageSource, Prepared]] = {}

    def feed() -> Iterator[tuple[int, np.ndarray]]:
        for index, source, prepared in prefetch:
            if isinstance(prepared, ImageError):
                finished[index] = (index, source, prepared, None)
                continue
            tensor, prepared.tensor = prepared.tensor, None
            pending[index] = (source, prepared)
            assert tensor is not None
            yield index, tensor

    next_index = 0
    for index, outputs in engine.infer_stream(feed(), engine.optimal_requests):
        source, prepared = pending.pop(index)
        finished[index] = (index, source, prepared, outputs)
        while next_index in finished:
            yield finished.pop(next_index)
            next_index += 1
    while next_index in finished:
        yield finished.pop(next_index)
        next_index += 1
