"""Checkpoints: official conversion for all released configs, our format, safe loading, fetching."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from official_reference import encode_decode as official_encode_decode
from official_reference import random_official_state_dict

from structtoken import (
    REGISTRY,
    RELEASED_MODELS,
    CheckpointError,
    CheckpointUnavailable,
    ModelConfig,
    build_model,
    convert_official_state_dict,
    fetch_checkpoint,
    get_config,
    load_model,
    load_official,
    load_state_dict_strict,
    resolve_model,
    save_model,
)
from structtoken.checkpoint import infer_official_config, torch_load_safe
from structtoken.config import ConfigError

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_blocks=2, num_classes=4, image_size=(64, 64))


def released_entries(reference_dir):
    return json.loads((reference_dir / "official_checkpoints.json").read_text())["checkpoints"]


@pytest.mark.reference
def test_registry_has_the_eleven_released_models(reference_dir):
    entries = released_entries(reference_dir)
    assert len(RELEASED_MODELS) == 11 == len(entries)
    for e in entries:
        name = f"{e['head_type']}_{e['download_key'].split('_')[1]}_ade20k"
        cfg = get_config(name)
        assert cfg.url == e["url"]
        assert cfg.mean == tuple(e["img_norm_cfg"]["mean"]) and cfg.std == tuple(e["img_norm_cfg"]["std"])
        assert cfg.crop_size == tuple(e["test_cfg"]["crop_size"]) and cfg.stride == tuple(e["test_cfg"]["stride"])
        assert cfg.test_scale == tuple(e["test_img_scale"])
        assert cfg.reported_miou == (e["miou_ss"], e["miou_ms"])
        assert len(cfg.classes) == 150 and len(cfg.palette) == 150


@pytest.mark.reference
@pytest.mark.parametrize("index", range(11))
def test_released_state_dict_converts_and_loads_strictly(reference_dir, index):
    e = released_entries(reference_dir)[index]
    name = f"{e['head_type']}_{e['download_key'].split('_')[1]}_ade20k"
    cfg = get_config(name)
    # meta tensors: shapes only, so ViT-L costs no memory
    official = {k: torch.empty(shape, device="meta") for k, shape in e["state_dict"]}
    assert len(official) == len(e["state_dict"])
    converted = convert_official_state_dict({"state_dict": official, "meta": {}})
    assert len(converted) == len(official)
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(t.numel() for t in model.state_dict().values()) == e["num_parameters"]
    load_state_dict_strict(model, converted)
    assert infer_official_config(official).name == name


def test_strict_load_names_every_problem():
    sse = build_model(ModelConfig(head="sse", **TINY))
    cse_sd = build_model(ModelConfig(head="cse", **TINY)).state_dict()
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(sse, cse_sd, source="cse.safetensors")
    msg = str(e.value)
    assert "missing" in msg and "unexpected" in msg and "heads.sse." in msg and "heads.cse." in msg
    other = build_model(ModelConfig(head="sse", **{**TINY, "num_classes": 7})).state_dict()
    with pytest.raises(CheckpointError, match=r"mis-shaped.*heads\.sse\.tokens: \(1, 7, 4, 4\)"):
        load_state_dict_strict(sse, other)


def test_converter_rejects_unknown_keys():
    sd = random_official_state_dict("cse", 32, 1, 4, (4, 4), 2)
    sd["decode_head.conv_seg.weight"] = torch.zeros(4, 32, 1, 1)
    with pytest.raises(CheckpointError, match="conv_seg"):
        convert_official_state_dict(sd)
    with pytest.raises(CheckpointError, match="no 'decode_head"):
        convert_official_state_dict({"foo.weight": torch.zeros(1)})


@pytest.mark.parametrize("kind", ["cse", "sse", "pwe"])
def test_official_pth_roundtrip_with_mmcv_container(tmp_path, kind):
    sd = random_official_state_dict(kind, 64, 1, 5, (4, 4), 2, seed=1)
    # an mmcv checkpoint carries numpy scalars in meta: these must load with weights_only=True
    container = {
        "meta": {"seed": np.int64(3), "iter": 10, "CLASSES": ("a", "b"), "lr": np.float64(0.1)},
        "state_dict": {f"module.{k}": v for k, v in sd.items()},
    }
    path = tmp_path / "official.pth"
    torch.save(container, path)
    model = load_official(path)
    assert model.cfg.head == kind and model.cfg.num_classes == 5 and model.cfg.depth == 1
    model.set_exact_attention(True)
    # the expected logits come from the independent functional re-implementation of the official forward
    # pass on the file's own (official) keys: no converter involved
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = official_encode_decode(sd, x, kind, (64, 64), model.cfg.num_heads)
        torch.testing.assert_close(model(x).logits, expected, rtol=1e-4, atol=1e-4)


def test_safetensors_roundtrip_is_bit_exact(tmp_path):
    cfg = ModelConfig(head="cse", extra_heads=("per_pixel_ds",), stem="conv", classes=("a", "b", "c", "d"), **TINY)
    model = build_model(cfg).eval()
    path = save_model(model, tmp_path / "set.safetensors")
    loaded = load_model(path)
    assert loaded.cfg == cfg
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    # the set is built once, on meta, and takes the file's tensors: none is left on meta, every one is
    # contiguous, and the parameters stay trainable parameters as a fresh build has them
    built = dict(model.named_parameters())
    for k, v in loaded.named_parameters():
        assert isinstance(v, torch.nn.Parameter) and v.requires_grad == built[k].requires_grad, k
    assert not any(t.is_meta or not t.is_contiguous() for t in (*loaded.parameters(), *loaded.buffers()))
    assert not loaded.training
    x = torch.randn(1, 3, 80, 48)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_assigned_load_refuses_a_tensor_the_state_dict_lacks():
    class WithScratch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

    with torch.device("meta"):
        model = WithScratch()
    sd = {k: torch.ones_like(v, device="cpu") for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"1 tensor.*not in the state dict: scratch"):
        load_state_dict_strict(model, sd, source="x.safetensors", assign=True)


def test_fp16_storage_loads_as_float32(tmp_path):
    model = build_model(ModelConfig(head="pwe", **TINY)).eval()
    path = save_model(model, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_model(path)
    assert all(v.dtype == torch.float32 for v in loaded.state_dict().values() if v.is_floating_point())
    torch.testing.assert_close(loaded.heads["pwe"].tokens, model.heads["pwe"].tokens, atol=1e-3, rtol=1e-3)


def test_truncated_files_give_clear_errors(tmp_path):
    model = build_model(ModelConfig(head="sse", **TINY))
    good = save_model(model, tmp_path / "good.safetensors").read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors"):
        load_model(bad)
    torch.save({"state_dict": random_official_state_dict("sse", 32, 1, 4, (4, 4), 1)}, tmp_path / "x.pth")
    data = (tmp_path / "x.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"cut\.pth: cannot read checkpoint"):
        load_official(tmp_path / "cut.pth")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.safetensors"):
        load_model(tmp_path / "empty.safetensors")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {}, "payload": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        torch_load_safe(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        resolve_model(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned_marker").exists()


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="cse_vit-t_ade20k"):
        resolve_model("vit-zz_nonsense")
    with pytest.raises(ConfigError, match="known models"):
        get_config("nope")


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="unknown head"):
        ModelConfig(head="upernet")
    with pytest.raises(ConfigError, match="SSE and PWE"):
        ModelConfig(head="sse", image_size=(500, 500))
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError, match="crop_size"):
        ModelConfig(test_mode="slide")
    with pytest.raises(ConfigError, match="unknown config field"):
        ModelConfig.from_dict({"head": "cse", "bogus": 1})
    assert ModelConfig.from_dict(REGISTRY["sse_vit-l_ade20k"].to_dict()) == REGISTRY["sse_vit-l_ade20k"]


# ------------------------------------------------------------------------------------ fetching
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    requests: ClassVar[list[str]] = []

    def do_GET(self):
        self.requests.append(self.headers.get("Range") or "")
        data, status = self.payload, 200
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            data, status = data[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_file():
    _RangeHandler.payload = os.urandom(300_000)
    _RangeHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/weights/model.pth", _RangeHandler
    server.shutdown()


def test_fetch_downloads_resumes_and_uses_cache(tmp_path, http_file):
    url, handler = http_file
    part = tmp_path / "model.pth.part"
    part.write_bytes(handler.payload[:100_000])  # an interrupted earlier download
    seen = []
    path = fetch_checkpoint(url, tmp_path, progress=False, progress_callback=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "model.pth" and path.read_bytes() == handler.payload
    assert handler.requests == ["bytes=100000-"]
    assert seen[-1] == (300_000, 300_000)
    assert not part.exists()
    assert fetch_checkpoint(url, tmp_path, progress=False) == path  # cached: no new request
    assert len(handler.requests) == 1


def test_fetch_unreachable_server_says_what_to_do(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/release/sse.pth"
    with pytest.raises(CheckpointUnavailable) as e:
        fetch_checkpoint(url, tmp_path, progress=False, timeout=2)
    msg = str(e.value)
    assert url in msg and str(tmp_path / "sse.pth") in msg and "offline" in msg


class _NetworkBlocked(OSError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a socket (or resolve a name) raises; returns the list of attempts."""
    import socket

    attempts: list[str] = []

    def refuse(name):
        def blocked(*args, **kwargs):
            attempts.append(name)
            raise _NetworkBlocked(f"network blocked by the test ({name})")

        return blocked

    monkeypatch.setattr(socket, "socket", refuse("socket.socket"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    return attempts


def test_released_model_without_network_names_the_url_and_the_destination(tmp_path, monkeypatch, no_network):
    cfg = get_config("sse_vit-t_ade20k")
    monkeypatch.setenv("STRUCTTOKEN_CACHE", str(tmp_path))
    with pytest.raises(CheckpointUnavailable) as e:
        resolve_model("sse_vit-t_ade20k", progress=False)
    msg = str(e.value)
    assert no_network, "the download never tried the network"
    assert cfg.url.startswith("http") and cfg.url in msg
    assert str(tmp_path / Path(cfg.url).name) in msg and "offline" in msg
    assert not (tmp_path / Path(cfg.url).name).exists()


def test_registry_name_uses_a_cached_file_without_network(tmp_path, monkeypatch, no_network):
    cfg = get_config("pwe_vit-t_ade20k").replace(depth=1, num_blocks=1)  # a small stand-in file
    sd = random_official_state_dict("pwe", 192, 1, 150, (32, 32), 1)
    monkeypatch.setenv("STRUCTTOKEN_CACHE", str(tmp_path))
    torch.save({"state_dict": sd}, tmp_path / Path(cfg.url).name)
    monkeypatch.setitem(REGISTRY, "pwe_vit-t_ade20k", cfg)
    model = resolve_model("pwe_vit-t_ade20k")
    assert model.cfg.name == "pwe_vit-t_ade20k" and model.cfg.depth == 1
    assert no_network == []  # the cache was used: no socket was even tried


# ------------------------------------------------------------------------------ missing ../shared
def test_missing_shared_folder_skip_says_where_and_how(tmp_path, monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=r"reference fixtures not found at .*nowhere.*\.\./shared"):
        conftest.missing_shared("reference fixtures", tmp_path / "nowhere")


def test_missing_shared_folder_fails_in_ci(tmp_path):
    """A fresh clone without ../shared under CI=true: the reference tests and test_data's CamVid test fail
    instead of skipping (the run must not pass on skips)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    ids = [
        "tests/test_checkpoint.py::test_registry_has_the_eleven_released_models",
        "tests/test_data.py::test_camvid_val_items",
    ]
    env = {
        **os.environ,
        "CI": "true",
        "STRUCTTOKEN_SHARED": str(tmp_path / "nowhere"),
        "STRUCTTOKEN_CAMVID": str(tmp_path / "nowhere" / "camvid"),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids]
    ci = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert ci.returncode != 0 and "skipped" not in ci.stdout, ci.stdout[-2000:]
    assert ci.stdout.count("CI=true: a missing shared folder is a failure") >= 2, ci.stdout[-2000:]


def test_archive_over_the_memory_budget_is_refused_before_reading(tmp_path, monkeypatch):
    torch.save({"state_dict": random_official_state_dict("sse", 32, 1, 4, (4, 4), 1)}, tmp_path / "x.pth")
    monkeypatch.setenv("STRUCTTOKEN_MAX_MODEL_BYTES", "10000")
    with pytest.raises(CheckpointError, match=r"^x\.pth: its records declare .* over the memory budget of 0\.01 MB"):
        load_official(tmp_path / "x.pth")
    monkeypatch.setenv("STRUCTTOKEN_MAX_MODEL_BYTES", "lots")
    with pytest.raises(CheckpointError, match="STRUCTTOKEN_MAX_MODEL_BYTES: expected a number of bytes"):
        load_official(tmp_path / "x.pth")
