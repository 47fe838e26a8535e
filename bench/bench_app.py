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

Two more modes (issue 24), each against a server of its own whose temporary files go to a folder of the bench
(``TMPDIR`` of the server), so the temp area can be measured:

* ``--worst``: uploads the worst checkpoints of issue 24 through ``/analyze``'s checkpoint input (``depth``
  1e6, ``num_blocks`` 1e6, ``depth`` 3000, ``test_scale`` 100000 and 6000x4500, a zip bomb, NaN weights, a
  0-byte ``.pth``, a 100,000-deep config), each after a clean request; per file the outcome (the message),
  seconds and the server's RSS after it, then RSS before / after all of them and after 5 clean requests
  (target: within 200 MB of before, every file refused in seconds).
* ``--soak-minutes N``: two clients back to back for N minutes, each request a random held-out CamVid image
  (``val``, else variants of the example) with a random analysis, head, readout, normalisation and block;
  every 15th request a corrupt image, every 25th a corrupt checkpoint. Per ``--window-s`` window: requests,
  refusals, unexpected failures, median latency, RSS and the temp area's size; then the temp area after the
  server is stopped with SIGINT (and its exit code).
"""

from __future__ import annotations

import argparse
import contextlib
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
    model: str | None,
    port: int,
    log_path: Path,
    limit_s: float = 600,
    malloc: str | None = None,
    tmpdir: Path | None = None,
) -> tuple[subprocess.Popen, float]:
    """Spawn ``python app.py`` and wait for the first HTTP 200 on ``/``; returns (process, seconds).
    ``malloc``: the server's ``STRUCTTOKEN_MALLOC`` (see :func:`structtoken.devices.malloc_settings`);
    ``tmpdir``: the server's ``TMPDIR`` (its temporary files and Gradio's cache go there)."""
    env = dict(
        os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False"
    )
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
        env.pop("GRADIO_TEMP_DIR", None)
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


def folder_mb(folder: Path) -> float:
    """Bytes under ``folder`` (files only), in MB."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):  # removed while walking
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return round(total / 2**20, 1)


def request(client: Any, image: Path, model: str, checkpoint: Path | None = None, timeout: float = 300, **kw: Any):
    """One ``/analyze`` call by parameter name; returns (outcome, message, seconds): ``ok``, ``refused`` (the
    app's own readable refusal) or ``failed`` (anything else: a cut connection, a timeout, an internal error)."""
    from gradio_client import handle_file

    t0 = time.perf_counter()
    try:
        job = client.submit(
            image=handle_file(str(image)),
            model=model,
            checkpoint=None if checkpoint is None else handle_file(str(checkpoint)),
            api_name="/analyze",
            **kw,
        )
        job.result(timeout=timeout)
        return "ok", "", time.perf_counter() - t0
    except Exception as e:
        msg = str(e)
        own = type(e).__name__ == "AppError" and "internal error" not in msg
        return ("refused" if own else "failed"), f"{type(e).__name__}: {msg[:300]}", time.perf_counter() - t0


def worst_files(folder: Path) -> dict[str, Path]:
    """The worst checkpoints of issue 24 (from ``tests/helpers.hostile_checkpoints``)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from helpers import hostile_checkpoints

    every = hostile_checkpoints(folder)
    names = ("depth_1e6", "num_blocks_1e6", "depth_3000", "test_scale_1e5", "test_scale_6000", "zip_bomb")
    names += ("declares_4gb", "nan_weights", "empty_pth", "nested_config", "newline_name", "long_names")
    return {n: every[n] for n in names}


def run_worst(args: argparse.Namespace, model: str, tmp: Path) -> dict[str, Any]:
    """``--worst``: see the module docstring."""
    port = args.port or free_port()
    proc, startup = start_server(model, port, tmp / "server.log", args.startup_timeout, args.malloc, tmp / "server_tmp")
    out: dict[str, Any] = {"mode": "worst", "startup_s": round(startup, 3), "server_log": str(tmp / "server.log")}
    try:
        image = make_images(args.image, tmp, 1)[0]
        client = make_client(port)
        for _ in range(3):
            request(client, image, model)
        out["rss_before_mb"] = round(rss_mb(proc.pid) or 0, 1)
        cases = {}
        for name, path in worst_files(tmp / "worst").items():
            outcome, msg, dt = request(client, image, model, checkpoint=path, timeout=args.case_timeout)
            clean = request(client, image, model)
            cases[name] = {
                "outcome": outcome,
                "seconds": round(dt, 2),
                "message": msg,
                "rss_after_mb": round(rss_mb(proc.pid) or 0, 1),
                "next_clean_request": clean[0],
                "file_kb": round(path.stat().st_size / 1024, 1),
            }
            print(name, json.dumps(cases[name]), file=sys.stderr, flush=True)
        out["cases"] = cases
        out["rss_after_all_mb"] = round(rss_mb(proc.pid) or 0, 1)
        for _ in range(5):
            request(client, image, model)
        out["rss_after_5_clean_mb"] = round(rss_mb(proc.pid) or 0, 1)
        out["rss_growth_mb"] = round(out["rss_after_5_clean_mb"] - out["rss_before_mb"], 1)
        out["pass"] = {
            "all_refused": all(c["outcome"] == "refused" for c in cases.values()),
            "seconds": max(c["seconds"] for c in cases.values()) < 10,
            "memory_returns": out["rss_growth_mb"] <= 200,
        }
        out["server_alive"] = proc.poll() is None
    finally:
        stop_server(proc)
    return out


def soak_images(tmp: Path) -> list[Path]:
    """Held-out CamVid images (``val``) when ../shared is there, else variants of the example."""
    val = ROOT.parent / "shared" / "data" / "camvid" / "val" / "images"
    found = sorted(val.glob("*.jpg")) + sorted(val.glob("*.png")) if val.is_dir() else []
    return found or fresh_images(DEFAULT_IMAGE, tmp, 20)


def run_soak(args: argparse.Namespace, model: str, tmp: Path) -> dict[str, Any]:
    """``--soak-minutes``: see the module docstring."""
    import random
    import signal

    port = args.port or free_port()
    server_tmp = tmp / "server_tmp"
    proc, startup = start_server(model, port, tmp / "server.log", args.startup_timeout, args.malloc, server_tmp)
    out: dict[str, Any] = {"mode": "soak", "minutes": args.soak_minutes, "startup_s": round(startup, 3)}
    images = soak_images(tmp)
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    bad_ckpts = list(worst_files(tmp / "worst").values())
    choices = {
        "analysis": ("prediction", "comparison", "focus", "probe", "attention"),
        "head": (None, "cse", "sse", "pwe", "per_pixel", "per_pixel_ds"),
        "readout": ("raw", "head", "fitted"),
        "normalize": ("shared", "per_map", "softmax"),
        "block": (-1, 1, 2, 3),
    }
    lock = threading.Lock()
    counter = itertools.count(1)
    window: dict[str, Any] = {"requests": 0, "refused": 0, "failed": 0, "latency": [], "examples": [], "refusals": {}}
    windows: list[dict[str, Any]] = []
    stop_at = time.monotonic() + 60 * args.soak_minutes

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        client = make_client(port)
        while time.monotonic() < stop_at:
            n = next(counter)
            kw = {k: rng.choice(v) for k, v in choices.items()}
            image, ckpt = rng.choice(images), None
            if n % 15 == 0:
                image = corrupt
            elif n % 25 == 0:
                ckpt = bad_ckpts[(n // 25) % len(bad_ckpts)]
            outcome, msg, dt = request(client, image, model, checkpoint=ckpt, timeout=args.case_timeout, **kw)
            with lock:
                window["requests"] += 1
                window["latency"].append(dt)
                if outcome != "ok":
                    window[outcome] += 1
                if outcome == "failed" and len(window["examples"]) < 3:
                    window["examples"].append(msg[:200])
                if outcome == "refused":
                    window["refusals"][msg[:90]] = window["refusals"].get(msg[:90], 0) + 1

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(2)]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if time.monotonic() < stop_at:
                time.sleep(min(args.window_s, max(0.5, stop_at - time.monotonic())))
            else:  # the last requests finish into the last window
                for t in threads:
                    t.join()
            with lock:
                lat = window.pop("latency")
                common = sorted(window.pop("refusals").items(), key=lambda kv: -kv[1])[:3]
                windows.append(
                    {
                        "t_s": round(time.monotonic() - t0),
                        **window,
                        "common_refusals": common,
                        "median_latency_s": round(statistics.median(lat), 3) if lat else None,
                        "rss_mb": _round(rss_mb(proc.pid), 1),
                        "temp_mb": folder_mb(server_tmp),
                    }
                )
                print(json.dumps(windows[-1]), file=sys.stderr, flush=True)
                window.update(requests=0, refused=0, failed=0, latency=[], examples=[], refusals={})
        out["windows"] = windows
        out["server_alive"] = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out["exit_code"] = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_server(proc)
            out["exit_code"] = "killed after 30 s"
    out["temp_mb_after_exit"] = folder_mb(server_tmp)
    out["temp_files_after_exit"] = sum(len(f) for _, _, f in os.walk(server_tmp))
    out["requests"] = sum(w["requests"] for w in windows)
    out["refused"] = sum(w["refused"] for w in windows)
    out["failed"] = sum(w["failed"] for w in windows)
    return out


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
    ap.add_argument("--worst", action="store_true", help="upload issue 24's worst checkpoints; RSS before/after")
    ap.add_argument("--soak-minutes", type=float, default=0, help="N minutes of mixed traffic (0 = off)")
    ap.add_argument("--window-s", type=float, default=60, help="soak: report every this many seconds")
    ap.add_argument("--case-timeout", type=float, default=120, help="worst / soak: seconds one request may take")
    args = ap.parse_args(argv)

    port = args.port or free_port()
    model = args.model
    if os.sep in model or model.endswith((".safetensors", ".pth")):
        model = str(Path(model).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    if args.worst or args.soak_minutes:
        result = run_worst(args, model, tmp) if args.worst else run_soak(args, model, tmp)
        print(json.dumps(result, indent=2))
        return 0
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
