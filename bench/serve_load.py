"""Closed-loop HTTP load on the tagger: (a) Ray Serve with dynamic batching, (b) Ray Serve without batching,
(c) a plain single-process FastAPI + uvicorn app, all on 127.0.0.1 with the same bundle and the same
request code (`raymlc.service.build_api`; (c) uses `DirectBackend`).

    .venv/bin/python bench/serve_load.py [--seconds 15] [--concurrency 1 8 32] [--replicas 2] [--bundle DIR]

Each of N clients posts a 10-second clip (16 kHz WAV), waits for the answer and posts again. Per system and
concurrency: throughput, p50 and p99 latency over `--seconds` of measured time, split into rounds that
alternate between the systems (the load of a shared machine drifts). Every model call uses one torch thread
(Serve: one per replica; (c): one per request, run concurrently in its thread pool); with more, OpenMP
threads oversubscribe the cores and throughput collapses on a shared machine. Prints the table and the
throughput ratios a/c and b/c, and writes bench/results/serve_load.json. Without --bundle the model is an
untrained one of the demo architecture (configs/demo.yaml): inference cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch

from raymlc.bundle import save_bundle
from raymlc.config import ServeConfig, load_config
from raymlc.data import LabelVocabulary
from raymlc.data.demo import DEMO_CLASSES
from raymlc.models import build_model
from raymlc.thresholds import AdaptiveThresholds, MemoryBank, idf

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLIP_SECONDS = 10.0
RATE = 16000


def demo_bundle(path: Path, bank_size: int = 1000) -> str:
    """An untrained tagger of the demo architecture with a random threshold rule and memory bank."""
    config = load_config(ROOT / "configs" / "demo.yaml").core()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(config.model, config.frontend, len(DEMO_CLASSES)).eval()
    targets = rng.random((bank_size, len(DEMO_CLASSES))) < 0.2
    bank = MemoryBank.build(rng.random((bank_size, config.model.embedding_dim)), targets)
    thresholds = AdaptiveThresholds(idf(targets), lam=config.thresholds.lam, k=config.thresholds.k)
    save_bundle(str(path), model, config, LabelVocabulary(DEMO_CLASSES), thresholds, bank)
    return str(path)


def clip_bytes() -> bytes:
    t = np.arange(round(CLIP_SECONDS * RATE)) / RATE
    wave = 0.1 * np.sin(2 * np.pi * 440 * t) + np.random.default_rng(1).normal(0, 0.02, t.size)
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def closed_loop(url: str, data: bytes, concurrency: int, warmup: float, seconds: float) -> tuple[list, dict]:
    """`concurrency` clients in a loop: latencies (s) and error counts of the requests sent and answered
    inside the measured window."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    start = time.perf_counter() + warmup
    end = start + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(session: httpx.AsyncClient) -> None:
        while (sent := time.perf_counter()) < end:
            response = await session.post(url, content=data, headers={"content-type": "audio/wav"})
            done = time.perf_counter()
            if start <= sent and done <= end:
                if response.status_code == 200:
                    latencies.append(done - sent)
                else:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1

    async with httpx.AsyncClient(timeout=120, limits=limits) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return latencies, errors


def wait_healthy(base: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base} not healthy after {timeout} s")


def measure(urls: dict[str, str], args: argparse.Namespace, data: bytes) -> list[dict]:
    """Per concurrency, `args.rounds` rounds over the systems in rotating order (the load of a shared machine
    drifts): each system gets `args.seconds` of measured time in all."""
    rows = []
    window = args.seconds / args.rounds
    for concurrency in args.concurrency:
        latencies: dict[str, list[float]] = {name: [] for name in urls}
        errors: dict[str, Counter] = {name: Counter() for name in urls}
        names = list(urls)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                done, failed = asyncio.run(closed_loop(urls[name], data, concurrency, args.warmup, window))
                latencies[name] += done
                errors[name].update(failed)
        for name in urls:
            ms = np.array(latencies[name]) * 1000
            rows.append(
                {
                    "system": name,
                    "concurrency": concurrency,
                    "requests": len(ms),
                    "throughput_rps": len(ms) / args.seconds,
                    "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                    "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
                    "errors": dict(errors[name]),
                }
            )
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    p50, p99 = (f"{row[key]:8.0f}" if row[key] is not None else "       -" for key in ("p50_ms", "p99_ms"))
    return (
        f"{row['system']:<22} {row['concurrency']:>4} {row['throughput_rps']:8.2f} {p50} {p99}  "
        f"{row['requests']:>5} {row['errors'] or ''}"
    )


def run(args: argparse.Namespace, bundle: str, data: bytes) -> list[dict]:
    """(c) in its own process (this script's --serve-baseline mode: uvicorn, one worker); (a) and (b) as two
    Serve applications of the same deployment, max_batch_size N and 1, at /a and /b. All stay up while the
    rounds alternate between them; an idle one costs next to no CPU."""
    import ray
    from ray import serve

    from raymlc.distributed.serving import build_app

    port = args.port + 1
    command = [sys.executable, __file__, "--serve-baseline", str(port), "--bundle", bundle]
    baseline = subprocess.Popen([*command, "--baseline-threads", str(args.baseline_threads)])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        for prefix, batch in (("a", args.max_batch_size), ("b", 1)):
            config = ServeConfig(
                bundle_uri=bundle,
                max_batch_size=batch,
                batch_wait_timeout_s=args.batch_wait_ms / 1000,
                torch_threads=args.torch_threads,
            )
            app = build_app(
                config,
                num_replicas=args.replicas,
                autoscaling_config=None,
                max_ongoing_requests=max(args.concurrency) * 2,
                max_queued_requests=-1,
                ray_actor_options={"num_cpus": args.cpus / args.replicas / 2},
            )
            serve.run(app, name=prefix, route_prefix=f"/{prefix}")
        urls = {
            "a serve-batched": f"http://127.0.0.1:{args.port}/a",
            "b serve-unbatched": f"http://127.0.0.1:{args.port}/b",
            "c fastapi-1-process": f"http://127.0.0.1:{port}",
        }
        for base in urls.values():
            wait_healthy(base)
        return measure({name: f"{base}/v1/tag" for name, base in urls.items()}, args, data)
    finally:
        serve.shutdown()
        ray.shutdown()
        baseline.terminate()
        baseline.wait(timeout=30)


def serve_baseline(port: int, bundle: str, threads: int) -> None:
    import uvicorn

    from raymlc.serving.app import DirectBackend, build_api

    app = build_api(DirectBackend(ServeConfig(bundle_uri=bundle, torch_threads=threads)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="tagger bundle (default: an untrained demo-architecture bundle)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per cell (default 15)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds the seconds are split into (default 3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured warm-up per round (default 2)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to Ray (default: all)")
    parser.add_argument("--replicas", type=int, default=2, help="Serve replicas, (a) and (b) (default 2)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per replica (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="(a)'s max_batch_size (default 8)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="(a)'s batch_wait_timeout (default 10)")
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=1,
        help="torch threads per request in (c), which runs requests concurrently in its thread pool (default 1)",
    )
    parser.add_argument("--port", type=int, default=18500, help="Serve port; (c) uses port + 1")
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.bundle, args.baseline_threads)
        return

    data = clip_bytes()
    print(f"{'system':<22} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  {'n':>5} errors", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="raymlc-serve-load-") as workdir:
        rows = run(args, args.bundle or demo_bundle(Path(workdir) / "bundle"), data)
    by = {(row["system"][0], row["concurrency"]): row for row in rows}
    summary = []
    for concurrency in args.concurrency:
        base = by[("c", concurrency)]["throughput_rps"]
        summary.append(
            {
                "concurrency": concurrency,
                "a_over_c": by[("a", concurrency)]["throughput_rps"] / base,
                "b_over_c": by[("b", concurrency)]["throughput_rps"] / base,
            }
        )
        print(f"concurrency {concurrency:>3}: a/c {summary[-1]['a_over_c']:.2f}  b/c {summary[-1]['b_over_c']:.2f}")
    top, single = max(args.concurrency), min(args.concurrency)
    p99_ratio = {system: by[("a", top)]["p99_ms"] / by[(system, single)]["p50_ms"] for system in "ac"}
    print(
        f"goal a/c >= 2 at concurrency {top}: {summary[-1]['a_over_c']:.2f}; goal p99(a, {top}) <= 3 x the "
        f"single-request latency: {p99_ratio['a']:.1f} x p50(a, {single}), {p99_ratio['c']:.1f} x p50(c, {single})"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(sys.argv),
        "settings": {key: value for key, value in vars(args).items() if key != "serve_baseline"},
        "clip_seconds": CLIP_SECONDS,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "wall_seconds": time.time() - started,
        "rows": rows,
        "ratios": summary,
        "p99_a_over_single_request_p50": p99_ratio,
    }
    (RESULTS / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'serve_load.json'}")


if __name__ == "__main__":
    main()
