"""Video frames in and out: decoding (PyAV, OpenCV fallback) and MP4 writing (H.264, else MPEG-4).

:class:`VideoReader` yields RGB ``uint8`` frames and knows the frame rate; :class:`VideoWriter`
encodes RGB frames to an MP4 written atomically (a temporary file renamed at the end).
:func:`predict_video` runs a prediction function over every frame, tracks the instances with
:class:`~maskkit.inference.tracking.MaskTracker` and writes the overlay MP4 and the tracks JSON.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.images import check_pixels
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_json
from maskkit.inference.tracking import MaskTracker
from maskkit.inference.visualize import class_colour, draw_instances
from maskkit.structures import Instances

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


class VideoReader:
    """Decode a video to RGB ``uint8`` ``H×W×3`` frames: ``for frame in VideoReader(path)``.

    PyAV (FFmpeg) decodes; when PyAV is missing or cannot open the file, OpenCV is tried.
    ``fps`` is the average frame rate (25 when the file does not say), ``frames`` the frame
    count from the header (0 when unknown), ``backend`` ``"pyav"`` or ``"opencv"``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("video not found", file=self.path)
        self._container: Any = None
        self._capture: Any = None
        error = ""
        try:
            import av

            self._container = av.open(str(self.path))
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 25.0
            self.frames = int(stream.frames or 0)
            self.width, self.height = int(stream.width), int(stream.height)
            self.backend = "pyav"
            self._check_size()
            return
        except ImportError:
            error = "PyAV not installed"
        except (OSError, ValueError, IndexError) as exc:  # av.error.* derive from OSError/ValueError
            error = f"{type(exc).__name__}: {exc}"
            self.close()
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise DataError(f"cannot decode video ({error or 'unknown format'})", file=self.path)
        self._capture = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
        self.frames = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        self.width, self.height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.backend = "opencv"
        self._check_size()

    def _check_size(self) -> None:
        """Frames beyond the whole-image pixel limit (from the stream header) are refused before decoding."""
        try:
            check_pixels(self.height, self.width, self.path)
        except DataError:
            self.close()
            raise

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._container is not None:
            import av

            try:
                for frame in self._container.decode(video=0):
                    yield frame.to_ndarray(format="rgb24")
            except av.error.FFmpegError as exc:
                raise DataError(f"cannot decode video frame ({exc})", file=self.path) from None
            return
        import cv2

        while True:
            ok, bgr = self._capture.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _h264_available() -> bool:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return True
    except (ValueError, av.error.FFmpegError):  # UnknownCodecError is a ValueError: no H.264 encoder
        return False


class VideoWriter:
    """Encode RGB ``uint8`` frames to an MP4 (H.264 via PyAV when available, else MPEG-4).

    Frames of odd size are padded to even width/height (yuv420p needs it). The file appears at
    ``path`` only when :meth:`close` succeeds (written to a temporary file, then renamed).
    Without PyAV, OpenCV's ``mp4v`` writer is used.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 23) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".mp4", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.crf = crf
        self.codec = ""
        self.count = 0
        self._container: Any = None
        self._stream: Any = None
        self._cv_writer: Any = None
        self._size: tuple[int, int] | None = None

    def _open(self, width: int, height: int) -> None:
        from fractions import Fraction

        self._size = (width, height)
        try:
            import av
        except ImportError:
            import cv2

            self.codec = "mp4v"
            self._cv_writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter.fourcc(*"mp4v"), self.fps,
                                              (width, height))
            return
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self.codec = "libx264" if _h264_available() else "mpeg4"
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream(self.codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if self.codec == "libx264":
            stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        else:
            stream.bit_rate = 4_000_000
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB ``uint8`` frame (all frames must have the size of the first)."""
        h, w = frame.shape[:2]
        h2, w2 = h + h % 2, w + w % 2
        if self._size is None:
            self._open(w2, h2)  # sets self._size to (w2, h2)
        elif (w2, h2) != self._size:
            raise ValueError(f"frame size {w}x{h} differs from the first frame's {self._size[0]}x{self._size[1]}")
        if (h2, w2) != (h, w):
            frame = np.pad(frame, ((0, h2 - h), (0, w2 - w), (0, 0)), mode="edge")
        frame = np.ascontiguousarray(frame[:, :, :3], dtype=np.uint8)
        if self._cv_writer is not None:
            import cv2

            self._cv_writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        else:
            import av

            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        self.count += 1

    def close(self) -> None:
        """Flush the encoder and move the file into place (nothing is written for zero frames)."""
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        if self._container is not None:
            self._container.close()
        if self._cv_writer is not None:
            self._cv_writer.release()
        self._container = self._stream = self._cv_writer = None
        if self.count:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            if self._container is not None:
                self._container.close()
            if self._cv_writer is not None:
                self._cv_writer.release()
        finally:
            self._container = self._stream = self._cv_writer = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def video_outputs(out: Path, key: str) -> dict[str, Path]:
    """Where a video's outputs go: ``OUT/<key>.mp4`` (overlay) and ``OUT/<key>.tracks.json``."""
    return {"overlay": out / f"{key}.mp4", "tracks": out / f"{key}.tracks.json"}


def draw_tracked(frame: np.ndarray, instances: Instances, track_ids: np.ndarray, class_names: dict[int, str],
                 scale: float | None = None) -> np.ndarray:
    """``frame`` with each instance drawn in its track's colour and labelled ``class #id score``."""
    shown = instances[np.arange(len(instances))]
    shown.labels = np.asarray(track_ids, dtype=np.int64)
    names = {int(t): f"{class_names.get(int(lab), str(int(lab)))} #{int(t)}"
             for t, lab in zip(track_ids, np.asarray(instances.labels), strict=True)}
    colours = {int(t): class_colour(int(t) - 1) for t in track_ids}
    return draw_instances(frame, shown, class_names=names, colours=colours, scale=scale)


def predict_video(
    path: Path,
    predict: Callable[[np.ndarray], Instances],
    out: Path,
    key: str,
    class_names: dict[int, str],
    *,
    overlay: bool = True,
    tracks: bool = True,
    iou_threshold: float = 0.3,
    max_gap: int = 15,
    on_frame: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict, track and write the outputs of one video; returns a summary (frames, tracks, files).

    ``on_frame(done, total)`` is called after each frame (``total`` 0 when the header has no count).
    The tracks JSON holds the video's ``fps``, size, frame count, class names and, per track,
    ``id``, ``category_id``, ``class``, ``frames``, ``boxes`` (XYXY) and ``scores``.
    """
    paths = video_outputs(out, key)
    tracker = MaskTracker(iou_threshold=iou_threshold, max_gap=max_gap)
    count = 0
    with VideoReader(path) as reader:
        writer = VideoWriter(paths["overlay"], reader.fps) if overlay else None
        try:
            for frame in reader:
                inst = predict(frame)
                ids = tracker.update(inst, count)
                if writer is not None:
                    writer.write(draw_tracked(frame, inst, ids, class_names))
                count += 1
                if on_frame is not None:
                    on_frame(count, reader.frames)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
        if not count:
            raise DataError("the video has no decodable frames", file=path)
        summary = {"video": str(path), "fps": round(reader.fps, 4), "width": reader.width, "height": reader.height,
                   "frames": count, "classes": {str(k): v for k, v in sorted(class_names.items())},
                   "tracks": tracker.to_json(class_names)}
    if tracks:
        atomic_write_json(paths["tracks"], summary, indent=1)
    written = [p for name, p in paths.items() if (name == "overlay" and overlay) or (name == "tracks" and tracks)]
    return {"frames": count, "tracks": len(tracker.tracks), "files": written,
            "codec": writer.codec if writer is not None else None}
