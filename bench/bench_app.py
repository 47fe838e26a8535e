"""Benchmark of the Gradio app as a server (not a test): prints a JSON summary.

    python bench/bench_app.py                      # the embedded camvid set
    python bench/bench_app.py --model path/to/set.safetensors --requests 20 --total 200

Measures, against ``python app.py`` started as a subprocess on 127.0.0.1:

* ``startup_s``: from spawning ``python app.py`` to the first HTTP 200 on ``/`` (target <= 15 s);
* ``first_request_s``: the first ``/analyze`` call (model load + first forward pass);
* ``latency_s``: ``/analyze`` latency over ``--requests`` sequential calls via gradio_client (Paper comparison
  of a 480x360 image; median target <= 1.5 s with the embedded set), the same image each time (the server
  reuses its backbone pass: figures and downloads only); ``latency_new_image_s``: the same with a new image
  each time (backbone and heads too);
* ``concurrency``: ``--clients`` concurrent clients x ``--per-client`` requests each (target: 0 failures);
* ``memory_mb``: the server's resident memory after 10 and after ``--total`` requests (target: grows by
  <= 100 MB), with requests cycling through analyses, normalisations, blocks and a few images; ``trace``
  records the RSS every ``--trace-every`` requests, to tell a plateau from a slow leak (run a long
  ``--total`` for that).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = ROOT / "assets" / "examples" / "street_synthetic.jpg"  # 480x360
TARGETS = {"startup_s": 15.0, "median_latency_s": 1.5, "failures": 0, "memory_growth_mb": 100.0}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (psutil when installed, else /proc/<pid>/status VmRSS)."""
    try:
        import psutil  # type: ignore[import-not-found]

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by ``pid`` (steadier than wall time on a busy machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def start_server(
    model: str | None, port: int, log_path: Path, limit_s: float = 600, malloc: str | None = None
) -> tuple[subprocess.Popen, float]:
    """Spawn ``python app.py`` and wait for the first HTTP 200 on ``/``; returns (process, seconds).
    ``malloc``: the server's ``STRUCTTOKEN_MALLOC`` (see :func:`structtoken.devices.malloc_settings`)."""
    env = dict(
        os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False"
    )
    if model:
        env["STRUCTTOKEN_DEFAULT_MODEL"] = model
    if malloc is not None:
        env["STRUCTTOKEN_MALLOC"] = malloc
    log = open(log_path, "w")  # noqa: SIM115 - closed when the process ends (see stop_server)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return proc, time.perf_counter() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.perf_counter() - t0 > limit_s:
            proc.kill()
            raise RuntimeError(f"no HTTP 200 from {url} after {limit_s:.0f} s; see {log_path}")
        time.sleep(0.05)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_images(base: Path, out_dir: Path, n: int = 4) -> list[Path]:
    """The base image and a few variants (flips, a crop), so the server's per-image cache is exercised."""
    from PIL import Image, ImageOps

    im = Image.open(base).convert("RGB")
    variants = [im, ImageOps.mirror(im), ImageOps.flip(im), im.crop((0, 0, im.width * 3 // 4, im.height))]
    paths = []
    for i, v in enumerate(variants[:n]):
        p = out_dir / f"bench_{i}.png"
        v.save(p)
        paths.append(p)
    return paths


def fresh_images(base: Path, out_dir: Path, n: int) -> list[Path]:
    """``n`` distinct images (the base rolled sideways by 3 px more each), so every request misses the
    server's per-image cache and runs the backbone and heads."""
    import numpy as np
    from PIL import Image

    im = np.asarray(Image.open(base).convert("RGB"))
    paths = []
    for i in range(n):
        p = out_dir / f"fresh_{i}.png"
        Image.fromarray(np.roll(im, 3 * (i + 1), axis=1)).save(p)
        paths.append(p)
    return paths


def make_client(port: int) -> Any:
    from gradio_client import Client

    return Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False, httpx_kwargs={"timeout": 300})


def call(
    client: Any,
    image: Path,
    model: str,
    analysis: str = "comparison",
    normalize: str = "shared",
    block: int = -1,
    timeout: float = 300,
) -> float:
    from gradio_client import handle_file

    t0 = time.perf_counter()
    job = client.submit(
        handle_file(str(image)), model, analysis, None, [], normalize, block, 0.5, None, api_name="/analyze"
    )
    job.result(timeout=timeout)
    return time.perf_counter() - t0


def _round(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


def summary_stats(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {
        "n": len(v),
        "median": round(statistics.median(v), 4),
        "mean": round(statistics.fmean(v), 4),
        "p90": round(v[min(len(v) - 1, int(0.9 * len(v)))], 4),
        "min": round(v[0], 4),
        "max": round(v[-1], 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="camvid", help="camvid (default), a released name or a set's path")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="a 480x360 image (default: the street)")
    ap.add_argument("--requests", type=int, default=20, help="sequential requests for the latency")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=5)
    ap.add_argument("--total", type=int, default=200, help="requests after which memory is read again")
    ap.add_argument("--trace-every", type=int, default=50, help="also record the RSS every N requests (0 = off)")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port")
    ap.add_argument("--startup-timeout", type=float, default=600, help="seconds to wait for the first 200")
    ap.add_argument("--malloc", default=None, help="the server's STRUCTTOKEN_MALLOC, e.g. trim_threshold=0")
    args = ap.parse_args(argv)

    port = args.port or free_port()
    model = args.model
    if os.sep in model or model.endswith((".safetensors", ".pth")):
        model = str(Path(model).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    result: dict[str, Any] = {"model": model, "image": str(args.image), "targets": TARGETS, "malloc": args.malloc}
    proc, startup = start_server(model, port, tmp / "server.log", args.startup_timeout, args.malloc)
    result["startup_s"] = round(startup, 3)
    result["startup_server_cpu_s"] = _round(cpu_s(proc.pid))
    result["load_average"] = list(os.getloadavg())
    result["server_log"] = str(tmp / "server.log")
    count = 0
    try:
        images = make_images(args.image, tmp)
        client = make_client(port)
        try:
            result["first_request_s"] = round(call(client, images[0], model), 3)
        except Exception as e:  # e.g. the embedded set is not there yet
            result["error"] = f"first request failed: {type(e).__name__}: {e}"
            print(json.dumps(result, indent=2))
            return 1
        count += 1
        memory: dict[str, float | None] = {}
        trace: list[tuple[int, float | None]] = []

        def tick() -> None:
            nonlocal count
            count += 1
            if count == 10:
                memory["after_10"] = rss_mb(proc.pid)
            if count == args.total:
                memory[f"after_{args.total}"] = rss_mb(proc.pid)
            if args.trace_every and count % args.trace_every == 0:
                rss = rss_mb(proc.pid)
                trace.append((count, None if rss is None else round(rss, 1)))

        # sequential latency: Paper comparison of the same 480x360 image (cached backbone pass)
        lat = []
        c0 = cpu_s(proc.pid)
        for _ in range(args.requests):
            lat.append(call(client, images[0], model))
            tick()
        c1 = cpu_s(proc.pid)
        result["latency_s"] = summary_stats(lat)
        if c0 is not None and c1 is not None:
            result["latency_s"]["server_cpu_per_request"] = round((c1 - c0) / max(1, args.requests), 4)

        # the same, a new image each time (backbone + every head + figures)
        lat = []
        for im in fresh_images(args.image, tmp, args.requests):
            lat.append(call(client, im, model))
            tick()
        result["latency_new_image_s"] = summary_stats(lat)

        # concurrency: N clients x M requests, each client its own connection
        failures: list[str] = []
        conc: list[float] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            c = make_client(port)
            for j in range(args.per_client):
                try:
                    analysis = ("comparison", "prediction")[j % 2]
                    dt = call(c, images[(i + j) % len(images)], model, analysis=analysis)
                    with lock:
                        conc.append(dt)
                        tick()
                except Exception as e:
                    with lock:
                        failures.append(f"client {i} request {j}: {type(e).__name__}: {e}")
                        tick()

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result["concurrency"] = {
            "clients": args.clients,
            "requests_each": args.per_client,
            "failures": len(failures),
            "failure_examples": failures[:3],
            "wall_s": round(time.perf_counter() - t0, 3),
            "latency_s": summary_stats(conc) if conc else None,
        }

        # memory: keep going to --total requests, cycling analyses / normalisations / blocks / images
        combos = itertools.cycle(
            itertools.product(
                ("comparison", "prediction", "probe", "attention"), ("shared", "per_map", "softmax"), (-1, 1)
            )
        )
        mixed_errors: list[str] = []
        while count < args.total:
            analysis, norm, block = next(combos)
            try:
                image = images[count % len(images)]
                call(client, image, model, analysis=analysis, normalize=norm, block=block)
            except Exception as e:  # an analysis the set cannot do is a readable error, not a crash
                mixed_errors.append(f"{analysis}/{norm}/{block}: {str(e)[:120]}")
            tick()
        before, after = memory.get("after_10"), memory.get(f"after_{args.total}")
        result["memory_mb"] = {
            "after_10": None if before is None else round(before, 1),
            f"after_{args.total}": None if after is None else round(after, 1),
            "growth": None if before is None or after is None else round(after - before, 1),
            "trace": trace,  # (requests served, RSS MB): a plateau, not a slope, is what the target is after
            "errors_in_mixed_requests": len(mixed_errors),
            "error_examples": sorted(set(mixed_errors))[:3],
        }
        result["requests"] = count
        result["server_alive"] = proc.poll() is None
    finally:
        stop_server(proc)
    growth = result["memory_mb"]["growth"]
    result["pass"] = {
        "startup": result["startup_s"] <= TARGETS["startup_s"],
        "median_latency": result["latency_s"]["median"] <= TARGETS["median_latency_s"],
        "concurrency": result["concurrency"]["failures"] == 0,
        "memory": growth is not None and growth <= TARGETS["memory_growth_mb"],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
