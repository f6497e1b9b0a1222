"""Load test of ``maskkit serve``: concurrent clients against a server this script starts on 127.0.0.1.

The server is ``maskkit serve`` in a subprocess over a random-weight ``--model-name`` checkpoint (default
``bottomup_effl0`` at ``--min-size 256``; the numbers measure the serving path, not accuracy). Images: the
shared DSB2018 nuclei PNGs (mostly 256x256; smooth synthetic images when absent). ``--clients`` threads send
``--requests`` requests in all (default 16 x 1,000), ``--malformed`` of them broken on purpose (not an image,
truncated, empty, wrong content type, bad query): those must get a 4xx, and nothing may get a 5xx.

Two runs: ``--max-batch 1`` (no dynamic batching) and ``--max-batch B``. Each prints requests, 5xx, 4xx of
malformed requests, p50/p99 latency of the valid requests, throughput, and the server's RSS after the warm-up
and at the end (the end must stay within 1.5x). Bounded: ``--timeout`` seconds per run, then it stops.

Run: ``python benchmarks/serve_load.py [--requests 1000] [--clients 16] [--max-batch 4] [--threads 2]``.
Exit code 1 when a 5xx was seen, a malformed request was not refused with a 4xx, or the RSS grew beyond 1.5x.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
NUCLEI = REPO.parent / "shared" / "data" / "dsb2018-stage1-train-subset" / "stage1_train"
MALFORMED = ("not_an_image", "truncated", "empty", "content_type", "bad_query")


def make_checkpoint(folder: Path, name: str, min_size: int) -> Path:
    """A random-weight checkpoint of ``name`` (one class) resizing to ``min_size``."""
    import torch

    from maskkit.config import TrainConfig
    from maskkit.models.checkpoint import save_checkpoint
    from maskkit.models.factory import build_model

    torch.manual_seed(0)
    cfg = TrainConfig.model_validate({"model": {"name": name, "pretrained_backbone": False, "min_size": min_size,
                                                "max_size": 2 * min_size}, "data": {"path": "x"}})
    model = build_model(cfg, 1, pretrained=False)
    path = folder / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                           "class_names": ["nucleus"], "category_ids": [1], "epoch": 1, "step": 1})
    return path


def load_images(n: int) -> list[bytes]:
    """PNG bytes of ``n`` nuclei images (synthetic 256 px images when the shared data is absent)."""
    from PIL import Image

    if NUCLEI.is_dir():
        folders = sorted(NUCLEI.iterdir())[:n]
        return [(f / "images" / f"{f.name}.png").read_bytes() for f in folders]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[tuple[str, int], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[(kind, status)] = self.statuses.get((kind, status), 0) + 1
            if kind == "valid" and status == 200:
                self.latencies.append(seconds)


def request(client: httpx.Client, url: str, kind: str, image: bytes) -> int:
    """One request of ``kind`` (``valid`` or one of :data:`MALFORMED`); its status code."""
    params: dict[str, str | float] = {"conf": 0.25, "masks": "rle"}
    headers = {"content-type": "image/png"}
    body = image
    if kind == "not_an_image":
        body = b"this is not an image " * 20
    elif kind == "truncated":
        body = image[: len(image) // 3]
    elif kind == "empty":
        body = b""
    elif kind == "content_type":
        headers = {"content-type": "text/html"}
    elif kind == "bad_query":
        params["conf"] = "high"
    return client.post(f"{url}/v1/predict", params=params, content=body, headers=headers, timeout=120).status_code


def load(url: str, images: list[bytes], total: int, clients: int, malformed: float, deadline: float,
         tally: Tally) -> float:
    """``total`` requests from ``clients`` threads (every 1/malformed-th one broken); the wall time taken."""
    counter = itertools.count()
    every = round(1 / malformed) if malformed > 0 else 0

    def worker() -> None:
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                k = next(counter)
                if k >= total:
                    return
                kind = MALFORMED[(k // every) % len(MALFORMED)] if every and k % every == every - 1 else "valid"
                start = time.perf_counter()
                try:
                    status = request(client, url, kind, images[k % len(images)])
                except httpx.HTTPError as exc:
                    with tally.lock:
                        tally.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                tally.add(kind, status, time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0) + 130)
    return time.perf_counter() - start


def start_server(ckpt: Path, port: int, max_batch: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src"), "MASKKIT_API_KEY": ""}
    cmd = [sys.executable, "-m", "maskkit", "serve", "--model", str(ckpt), "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(max_batch), "--max-queue", "256", "--threads", str(threads), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(ckpt: Path, images: list[bytes], args: argparse.Namespace, max_batch: int) -> dict[str, float | str]:
    port = free_port()
    proc = start_server(ckpt, port, max_batch, args.threads)
    url = f"http://127.0.0.1:{port}"
    try:
        warm = Tally()
        load(url, images, 2 * args.clients, args.clients, 0.0, time.monotonic() + args.timeout, warm)
        rss_warm = rss_mb(proc.pid)
        tally = Tally()
        wall = load(url, images, args.requests, args.clients, args.malformed, time.monotonic() + args.timeout, tally)
        rss_end = rss_mb(proc.pid)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    done = sum(tally.statuses.values())
    server_errors = sum(n for (_, s), n in tally.statuses.items() if s >= 500)
    bad = sum(n for (k, _), n in tally.statuses.items() if k != "valid")
    bad_4xx = sum(n for (k, s), n in tally.statuses.items() if k != "valid" and 400 <= s < 500)
    valid_not_ok = sum(n for (k, s), n in tally.statuses.items() if k == "valid" and s != 200)
    lat = sorted(tally.latencies)
    batches = _metric(metrics, "maskkit_batch_size_count")
    images_done = _metric(metrics, "maskkit_batch_size_sum")
    return {"max_batch": max_batch, "requests": done, "5xx": server_errors, "malformed": bad,
            "malformed_4xx": bad_4xx, "valid_not_200": valid_not_ok, "transport_errors": len(tally.errors),
            "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
            "req_s": done / wall if wall else float("nan"), "mean_batch": images_done / batches if batches else 0.0,
            "rss_warm": rss_warm, "rss_end": rss_end, "wall_s": wall}


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="Requests per run (after the warm-up).")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent client threads.")
    parser.add_argument("--malformed", type=float, default=0.1, help="Share of broken requests.")
    parser.add_argument("--max-batch", type=int, default=4, help="--max-batch of the batched run.")
    parser.add_argument("--threads", type=int, default=2, help="Inference threads of the server.")
    parser.add_argument("--model-name", default="bottomup_effl0", help="Registered model (random weights).")
    parser.add_argument("--min-size", type=int, default=256, help="Inference resize of the model.")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds per run before it stops sending.")
    args = parser.parse_args(argv)
    images = load_images(16)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), args.model_name, args.min_size)
        rows = [run(ckpt, images, args, b) for b in dict.fromkeys((1, args.max_batch))]
    source = "DSB2018 nuclei PNGs" if NUCLEI.is_dir() else "synthetic 256 px PNGs"
    print(f"maskkit serve load: {args.model_name} (random weights, min_size {args.min_size}), {source}, "
          f"{args.clients} clients, {args.requests} requests per run ({args.malformed:.0%} malformed), "
          f"{args.threads} inference threads, {os.cpu_count()} CPUs")
    print("| max batch | requests | 5xx | malformed -> 4xx | p50 ms | p99 ms | req/s | mean batch | RSS warm MB "
          "| RSS end MB | end/warm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for r in rows:
        ratio = float(r["rss_end"]) / float(r["rss_warm"])
        print(f"| {r['max_batch']} | {r['requests']} | {r['5xx']} | {r['malformed_4xx']}/{r['malformed']} | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['req_s']:.1f} | {r['mean_batch']:.2f} | "
              f"{r['rss_warm']:.0f} | {r['rss_end']:.0f} | {ratio:.2f} |")
        ok &= (r["5xx"] == 0 and r["malformed_4xx"] == r["malformed"] and r["valid_not_200"] == 0
               and r["transport_errors"] == 0 and ratio <= 1.5 and r["requests"] == args.requests)
    print("check: 0 5xx, every malformed request a 4xx, every valid one 200, RSS end/warm <= 1.5:",
          "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
