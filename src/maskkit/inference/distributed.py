"""Distributed prediction and evaluation on Ray Data (``maskkit predict/eval --ray``; extra ``maskkit[ray]``).

The work items are the dataset: one row per image, or, for an image predicted tile by tile
(``--tile``), one row per tile, so the tiles of one huge image fan out across workers.
``map_batches`` runs them on a pool of actors (:class:`PredictWorker`), each holding ONE Predictor
(one model load per worker; CPUs, torch threads and GPUs per worker set by :class:`RaySettings`).
Each result comes back to the driver as a pickled ``Instances`` with RLE masks (never dense
``N×H×W`` arrays; with overlays, the JPEG drawn by the worker), in the dataset's order
(``preserve_order``), streamed: the driver writes the per-image files through
:mod:`maskkit.inference.writers` or feeds the evaluators while later images are still being
predicted, and stitches the tiles of one image in tile order exactly as
:func:`~maskkit.inference.tiling.predict_tiled` does, so every output is identical to the
single-process run. A killed worker is restarted by Ray and its batch retried (Ray Data's actor
fault tolerance: ``max_restarts=-1``, ``max_task_retries=-1``).

Ray is imported only here and only when a function needs it; without it the flag fails with one
line (:data:`RAY_HINT`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.windows import open_image_windows
from maskkit.errors import ConfigError, MaskkitError, one_line
from maskkit.evaluation.results import read_record_image
from maskkit.inference.filters import FilteredPredict
from maskkit.inference.tiling import Tile, iter_tiles, stitch_tiles
from maskkit.inference.writers import overlay_jpeg
from maskkit.structures import Instances

RAY_HINT = "--ray needs Ray, which is not installed: pip install 'maskkit[ray]'"
MAX_BLOCKS = 4096
"""At most this many blocks (Ray Data tasks): one row (batch) per block up to it, then several per block (a
retried task redoes its block)."""
CRASH_ONCE_ENV = "MASKKIT_RAY_CRASH_ONCE"
"""Fault injection for tests: a worker whose environment names an existing file deletes it and kills its own
process on its next batch (once), so the tests can check that Ray retries the batch."""


@dataclass(frozen=True)
class RaySettings:
    """Where and how to run: ``address`` is ``auto`` (the running cluster), a Ray address, or ``local:N`` (a
    local Ray instance with N CPUs on 127.0.0.1); ``workers`` actors (None: as many as the cluster's CPUs, or
    GPUs, allow), each with ``cpus`` CPUs (also its torch threads) and ``gpus`` GPUs; ``batch_size`` rows per
    actor call. A dead actor is restarted and its batch retried as Ray Data does by default (actors with
    ``max_restarts=-1`` and ``max_task_retries=-1``)."""

    address: str
    workers: int | None = None
    cpus: int = 1
    gpus: float = 0.0
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--ray-workers must be >= 1, got {self.workers}")
        if self.cpus < 1 or self.gpus < 0 or self.batch_size < 1:
            raise ConfigError("--ray-cpus must be >= 1, --ray-gpus >= 0 and the batch size >= 1")
        local_cpus(self.address)  # validates local:N


def local_cpus(address: str) -> int | None:
    """N of ``local:N`` (None for another address); a ConfigError for a malformed one."""
    if not address.startswith("local"):
        if not address:
            raise ConfigError("--ray needs auto, a Ray address or local:N")
        return None
    n = address.partition(":")[2]
    if not n.isdigit() or int(n) < 1:
        raise ConfigError(f"--ray local:N needs a number of CPUs N >= 1, got {address!r}")
    return int(n)


def import_ray() -> Any:
    """The ``ray`` module (with Ray Data); a one-line ConfigError naming the extra when it is missing."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(RAY_HINT) from None
    return ray


def ray_settings(address: str | None, workers: int | None = None, cpus: int = 1, gpus: float = 0.0
                 ) -> RaySettings | None:
    """:class:`RaySettings` of the ``--ray*`` flags (None without ``--ray``), checked; Ray's absence is one line,
    reported before anything is loaded."""
    if address is None:
        return None
    import_ray()
    return RaySettings(address, workers=workers, cpus=cpus, gpus=gpus)


@contextlib.contextmanager
def ray_session(settings: RaySettings) -> Iterator[Any]:
    """Connect to (or start) Ray for ``settings.address``; a session started here is shut down on exit.

    An already initialised Ray (e.g. a test's, or a notebook's) is used as it is.
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        n = local_cpus(settings.address)
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        try:
            if n is not None:
                ray.init(num_cpus=n, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
            else:
                ray.init(settings.address, **quiet)
        except Exception as exc:  # ConnectionError, TimeoutError, ValueError...: Ray's messages run long
            raise ConfigError(f"--ray {settings.address}: cannot start or reach Ray ({one_line(exc)})") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


# -- the workers ------------------------------------------------------------------------------------------
def _crash_once() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)  # only the worker that removes the marker dies
            os._exit(1)


class PredictWorker:
    """A Ray Data actor: one Predictor (``maskkit.inference.predictor.load(model, **options)``) for all its batches.

    Rows are ``image`` (a file predicted whole, through :class:`FilteredPredict` with ``filters``; with
    ``overlay_names`` also its overlay JPEG, drawn here so the driver only writes it), ``tile``
    (one window of a file, the raw Predictor, as :func:`~maskkit.inference.tiling.predict_tiled` runs it) or
    ``record`` (an evaluation image: embedded bytes or a file; ``None`` when unreadable). Each result is a
    pickled ``("ok", Instances)`` or ``("error", MaskkitError)``, so a bad image ends the run with its
    one-line error, as in a single process.
    """

    def __init__(self, model: str, options: Mapping[str, Any], filters: Mapping[str, Any] | None,
                 overlay_names: Mapping[int, str] | None = None) -> None:
        from maskkit.inference.predictor import load  # deferred: torch

        self.predictor = load(model, **options)
        self.filtered = FilteredPredict(self.predictor, **filters) if filters is not None else None
        self.overlay_names = overlay_names
        self._windows: tuple[str, Any] | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _crash_once()
        results = []
        for i in range(len(batch["index"])):
            row = {k: v[i] for k, v in batch.items()}
            try:
                value: tuple[str, Any] = ("ok", self._predict(row))
            except MaskkitError as exc:
                value = ("error", exc)
            results.append(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        self._close()
        return {"index": batch["index"], "tile": batch["tile"], "result": np.array(results, dtype=object)}

    def _predict(self, row: dict[str, Any]) -> Instances | tuple[Instances, bytes | None] | None:
        path = Path(str(row["path"]))
        if row["kind"] == "image":
            assert self.filtered is not None
            whole, found = self.filtered.file(path)
            names = self.overlay_names
            return found, overlay_jpeg(whole, found, names) if names is not None and whole is not None else None
        if row["kind"] == "tile":
            image: np.ndarray | None = self._open(str(path)).read(int(row["y0"]), int(row["y1"]), int(row["x0"]),
                                                                  int(row["x1"]))
        else:
            image = read_record_image(bytes(row["data"]) or None, str(row["source"]) or None, path)
        if image is None:
            return None
        if str(row.get("corruption", "")):  # maskkit robustness: the model's input image, corrupted
            from maskkit.data.corruptions import corrupt_tensor  # deferred: torch
            from maskkit.inference.common import image_tensor

            corrupted = corrupt_tensor(image_tensor(image, self.predictor.config), str(row["corruption"]),
                                       int(row["severity"]), int(row["seed"]))
            inst = self.predictor.predict(corrupted)
        else:
            inst = self.predictor.predict(image)
        assert isinstance(inst, Instances)  # one image in, one Instances out
        return inst

    def _open(self, path: str) -> Any:
        if self._windows is None or self._windows[0] != path:
            self._close()
            self._windows = (path, open_image_windows(path))
        return self._windows[1]

    def _close(self) -> None:
        if self._windows is not None:
            self._windows[1].close()
            self._windows = None


# -- the driver -------------------------------------------------------------------------------------------
def _row(index: int, kind: str, path: Path | str, tile: Tile | None = None, data: bytes | None = None,
         source: str = "", corruption: tuple[str, int, int] | None = None) -> dict[str, Any]:
    box = (tile.y0, tile.y1, tile.x0, tile.x1) if tile is not None else (0, 0, 0, 0)
    name, severity, seed = corruption or ("", 0, 0)
    return {"index": index, "kind": kind, "path": str(path), "tile": tile.index if tile is not None else -1,
            "y0": box[0], "y1": box[1], "x0": box[2], "x1": box[3], "data": data or b"", "source": source,
            "corruption": name, "severity": severity, "seed": seed}


def run_rows(rows: list[dict[str, Any]], model: str | Path, options: Mapping[str, Any],
             filters: Mapping[str, Any] | None, settings: RaySettings,
             overlay_names: Mapping[int, str] | None = None) -> Iterator[tuple[int, int, Any]]:
    """Run ``rows`` on a pool of :class:`PredictWorker` actors; yield ``(index, tile, result)`` in row order.

    Needs an initialised Ray (:func:`ray_session`). A worker's MaskkitError is raised here.
    """
    if not rows:
        return
    ray = import_ray()
    resources = ray.cluster_resources()
    workers = settings.workers
    if workers is None:
        workers = int(resources.get("GPU", 0) // settings.gpus) if settings.gpus else \
            int(resources.get("CPU", 1) // settings.cpus)
    workers = max(1, min(workers, math.ceil(len(rows) / settings.batch_size)))
    ctx = ray.data.DataContext.get_current()
    before = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True  # results in the rows' order: deterministic outputs
    ctx.enable_progress_bars = False  # the CLI draws its own
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)  # not its notes on the progress bars switched off, and the like
    try:
        per_block = max(settings.batch_size, math.ceil(len(rows) / MAX_BLOCKS))
        ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_block))
        gpus = {"num_gpus": settings.gpus} if settings.gpus else {}
        ds = ds.map_batches(
            PredictWorker, batch_format="numpy", batch_size=settings.batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=settings.cpus,
            fn_constructor_kwargs={"model": str(model), "filters": filters, "overlay_names": overlay_names,
                                   "options": {**options, "threads": settings.cpus}}, **gpus)
        for row in ds.iter_rows():
            status, value = pickle.loads(row["result"])
            if status == "error":
                raise value
            yield int(row["index"]), int(row["tile"]), value
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = before
        logger.setLevel(level)


def predict_files(items: Sequence[Any], predict: FilteredPredict, model: str | Path, options: Mapping[str, Any],
                  settings: RaySettings, overlay_names: Mapping[int, str] | None = None
                  ) -> Generator[tuple[Any, None, Instances, bytes | None], None, None]:
    """``(item, None, instances, overlay)`` for each image item (``.path``) in order, the instances as
    ``predict.file(item.path)`` gives them in one process (``options``: the Predictor's, ``predict``: the filters
    and tiling) but run on Ray; with ``overlay_names`` (class names) the workers also draw the overlay JPEGs
    (:func:`~maskkit.inference.writers.overlay_jpeg`) of the images they predict whole (else ``overlay`` is None).

    Images that ``predict`` tiles are split into one row per tile; their predictions are stitched here.
    """
    rows, plans = [], {}
    for i, it in enumerate(items):
        size = predict.tiled_size(it.path) if predict.tile is not None else None
        if size is None:
            rows.append(_row(i, "image", it.path))
            continue
        tiles = list(iter_tiles(size[0], size[1], predict.tile or 0, predict.overlap))
        plans[i] = (size, tiles)
        rows += [_row(i, "tile", it.path, t) for t in tiles]
    filters = {"conf": predict.conf, "classes": predict.classes, "max_det": predict.max_det, "tile": predict.tile,
               "overlap": predict.overlap}
    stream = run_rows(rows, model, options, filters, settings, overlay_names)
    for i, group in groupby(stream, key=lambda r: r[0]):
        if i in plans:
            (h, w), tiles = plans[i]
            inst, _ = stitch_tiles(h, w, tiles, ((tiles[t], value) for _, t, value in group), predict.overlap)
            yield items[i], None, predict.finish(inst), None
        else:
            yield items[i], None, *next(group)[2]


@contextlib.contextmanager
def ray_predictions(settings: RaySettings, predict: FilteredPredict, model: str | Path, options: Mapping[str, Any],
                    overlay_names: Mapping[int, str] | None = None
                    ) -> Iterator[Callable[[Sequence[Any]], Iterator[tuple[Any, None, Instances, bytes | None]]]]:
    """A Ray session (:func:`ray_session`) and ``items -> (item, None, instances, overlay)`` run on it
    (:func:`predict_files`); streams left unfinished are closed before the session ends."""
    streams: list[Generator[tuple[Any, None, Instances, bytes | None], None, None]] = []

    def run(items: Sequence[Any]) -> Iterator[tuple[Any, None, Instances, bytes | None]]:
        streams.append(predict_files(items, predict, model, options, settings, overlay_names))
        return streams[-1]

    with ray_session(settings):
        try:
            yield run
        finally:
            for stream in streams:  # an interrupted stream is closed while Ray still runs
                stream.close()


def predict_records(records: Sequence[Any], image_path: Any, model: str | Path, options: Mapping[str, Any],
                    settings: RaySettings, corruptions: Sequence[tuple[str, int, int] | None] | None = None
                    ) -> Generator[Instances | None, None, None]:
    """The Predictor's ``Instances`` of each evaluation ``ImageRecord`` in order (None: image unreadable), run on
    Ray; ``image_path(record)`` is its file (as ``AnnotationSet.image_path``). ``corruptions``: per record, None or
    ``(name, severity, seed)``: the model's input image is corrupted first
    (:func:`~maskkit.data.corruptions.corrupt_tensor`, as ``maskkit robustness`` does in one process)."""
    corr = list(corruptions) if corruptions is not None else [None] * len(records)
    rows = [_row(i, "record", image_path(rec), data=rec.data, source=str(rec.source or ""), corruption=c)
            for i, (rec, c) in enumerate(zip(records, corr, strict=True))]
    for _, _, value in run_rows(rows, model, options, None, settings):
        yield value
