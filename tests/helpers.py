"""Shared test helpers: the tiny model configuration, a saved tiny set, and the app served in-process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from structtoken import ModelConfig, build_model, save_model

NAMES = ("Sky", "Building", "Road", "Car")
PALETTE = ((128, 128, 128), (128, 0, 0), (128, 64, 128), (64, 0, 128))
HEADS = ("cse", "sse", "pwe", "per_pixel", "per_pixel_ds")


def tiny_config(**changes: Any) -> ModelConfig:
    """A 2-layer, 32-wide ViT with every head (2 blocks, 4 classes, 64x64): random weights run in ms."""
    cfg = ModelConfig(
        head=HEADS[0],
        extra_heads=HEADS[1:],
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_blocks=2,
        num_classes=4,
        image_size=(64, 64),
        classes=NAMES,
        palette=PALETTE,
    )
    return cfg.replace(**changes) if changes else cfg


def save_tiny_set(path: Path, seed: int = 0, **changes: Any) -> Path:
    """:func:`tiny_config` (with ``changes``) built from ``seed`` and saved as a set (a few hundred KB);
    an existing file is reused."""
    import torch

    if not path.is_file():
        torch.manual_seed(seed)
        save_model(build_model(tiny_config(**changes)), path)
    return path


@contextlib.contextmanager
def serve_app(default_model: Path) -> Iterator[tuple[str, Any]]:
    """``app.py`` launched in-process on 127.0.0.1 (Gradio picks a free port) with ``default_model`` as
    its default set, on a fresh :class:`analysis.service.Explorer`. Yields (url, the page's
    :class:`app.ExplorerUI`, whose ``explorer`` is the service it calls)."""
    old = os.environ.get("STRUCTTOKEN_DEFAULT_MODEL")
    os.environ["STRUCTTOKEN_DEFAULT_MODEL"] = str(default_model)
    import app
    from analysis.service import Explorer

    demo = app.build_demo(Explorer())
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **app.launch_kwargs())
    try:
        yield demo.local_url, demo.explorer_ui
    finally:
        demo.close()
        if old is None:
            os.environ.pop("STRUCTTOKEN_DEFAULT_MODEL", None)
        else:
            os.environ["STRUCTTOKEN_DEFAULT_MODEL"] = old


# ------------------------------------------------------------------------------ hostile checkpoints
def _with_config(tiny: Path, out: Path, config: str | None = None, tensors: dict | None = None, drop=()) -> Path:
    """A copy of the set ``tiny`` with its config JSON replaced by ``config`` and tensors added / replaced /
    dropped: the header still describes the tensors honestly, only what they say is hostile."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny), framework="pt") as f:
        meta = dict(f.metadata())
        sd = {k: f.get_tensor(k) for k in f.keys() if k not in drop}  # noqa: SIM118 - safe_open has no __iter__
    if config is not None:
        meta["structtoken_config"] = config
    sd.update(tensors or {})
    save_file(sd, str(out), metadata=meta)
    return out


def _rezip(src: Path, out: Path, add: dict[str, bytes] | None = None, deflate: bool = False) -> Path:
    """``src`` (a torch zip checkpoint) rewritten record by record, optionally deflated, with records added."""
    import zipfile

    with (
        zipfile.ZipFile(src) as z,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as o,
    ):
        for info in z.infolist():
            o.writestr(info.filename, z.read(info.filename))
        for name, data in (add or {}).items():
            o.writestr(f"{z.infolist()[0].filename.split('/')[0]}/{name}", data)
    return out


def hostile_checkpoints(folder: Path) -> dict[str, Path]:
    """Bad checkpoint files for every case of issue 24's "What was found" 1-6, made in ``folder`` (each at most
    at most 1.6 MB on disk, about 16 MB in all, in about a second). Name -> path; every one must be refused
    with a :class:`structtoken.errors.StructTokenError` within seconds and without allocating what it asks for."""
    import json
    import struct
    import zipfile

    import torch
    from official_reference import random_official_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    one_head = {"head": "sse", "extra_heads": ()}
    tiny = save_tiny_set(folder / "tiny_source.safetensors", **one_head)
    cfg = tiny_config(**one_head).to_dict()
    out: dict[str, Path] = {}

    def config(name: str, **changes: Any) -> None:
        out[name] = _with_config(tiny, folder / f"{name}.safetensors", json.dumps({**cfg, **changes}))

    # 1. unbounded configs
    config("depth_1e6", depth=1_000_000)
    config("num_blocks_1e6", num_blocks=1_000_000)
    config("depth_3000", depth=3000)
    config("embed_dim_1e6", embed_dim=1_000_000, num_heads=1)
    config("num_classes_1e6", num_classes=1_000_000, classes=[], palette=[])
    config("image_size_1e5", image_size=[100_000, 100_000])
    config("num_classes_0", num_classes=0, classes=[], palette=[])
    config("depth_string", depth="12")
    nested = "[" * 100_000 + "]" * 100_000
    out["nested_config"] = _with_config(
        tiny, folder / "nested_config.safetensors", json.dumps(cfg)[:-1] + f', "x": {nested}}}'
    )
    out["huge_config_json"] = _with_config(
        tiny, folder / "huge_config.safetensors", json.dumps({**cfg, "description": "x" * 1_100_000})
    )
    # within the bounds, but over a small memory budget (the test sets STRUCTTOKEN_MAX_MODEL_BYTES)
    config("over_budget", embed_dim=1024, depth=24, num_heads=16)
    # 3. test_scale past the image cap
    config("test_scale_6000", test_scale=[6000, 4500])
    config("test_scale_1e5", test_scale=[100_000, 100_000])
    # 4. zip bombs and lying archives
    sd = random_official_state_dict("sse", 32, 1, 4, (4, 4), 1)
    torch.save({"state_dict": sd}, folder / "official.pth")
    torch.save({"state_dict": {**sd, "pad": torch.zeros(4 * 2**20)}}, folder / "bomb_src.pth")  # 16 MB of zeros
    out["zip_bomb"] = _rezip(folder / "bomb_src.pth", folder / "zip_bomb.pth", deflate=True)
    (folder / "bomb_src.pth").unlink()
    # a stored record whose central directory claims 4 GB (the sizes torch trusts)
    lie = bytearray(_rezip(folder / "official.pth", folder / "tmp.pth").read_bytes())
    (folder / "tmp.pth").unlink()
    cd = lie.rfind(b"PK\x01\x02")  # the last central-directory entry
    struct.pack_into("<I", lie, cd + 24, 4_000_000_000)
    (folder / "declares_4gb.pth").write_bytes(bytes(lie))
    out["declares_4gb"] = folder / "declares_4gb.pth"
    with zipfile.ZipFile(folder / "many_records.pth", "w") as z:
        for i in range(10_001):
            z.writestr(f"x/r{i}", b"")
    out["many_records"] = folder / "many_records.pth"
    # 5. non-finite values, odd dtypes
    from safetensors import safe_open

    with safe_open(str(tiny), framework="pt") as f:
        k = "backbone.pos_embed"
        shape = f.get_slice(k).get_shape()
    out["nan_weights"] = _with_config(tiny, folder / "nan.safetensors", tensors={k: torch.full(shape, float("nan"))})
    out["inf_weights"] = _with_config(tiny, folder / "inf.safetensors", tensors={k: torch.full(shape, float("inf"))})
    config("std_nan", std=[float("nan"), 1.0, 1.0])
    for dt in ("int8", "bool", "float64"):
        t = torch.ones(shape, dtype=getattr(torch, dt))
        out[f"dtype_{dt}"] = _with_config(tiny, folder / f"dtype_{dt}.safetensors", tensors={k: t})
    torch.save({"state_dict": {**sd, "backbone.cls_token": sd["backbone.cls_token"].double()}}, folder / "f64.pth")
    out["pth_float64"] = folder / "f64.pth"
    torch.save(
        {"state_dict": {**sd, "backbone.cls_token": torch.full_like(sd["backbone.cls_token"], float("nan"))}},
        folder / "nan.pth",
    )
    out["pth_nan"] = folder / "nan.pth"
    # 6. foreign exceptions and unreadable messages
    (folder / "empty.pth").write_bytes(b"")
    out["empty_pth"] = folder / "empty.pth"
    (folder / "empty.safetensors").write_bytes(b"")
    out["empty_safetensors"] = folder / "empty.safetensors"
    data = (folder / "official.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 3])
    out["truncated_pth"] = folder / "truncated.pth"
    (folder / "garbage.pth").write_bytes(b"\x80\x02}q\x00." + bytes(range(256)) * 4)
    out["legacy_or_garbage_pth"] = folder / "garbage.pth"
    torch.save({0: torch.zeros(1)}, folder / "int_keys.pth")
    out["int_keys_pth"] = folder / "int_keys.pth"
    torch.save([torch.zeros(1)], folder / "list.pth")
    out["list_pth"] = folder / "list.pth"
    torch.save({"state_dict": {**sd, "backbone.pos_embed": torch.zeros(())}}, folder / "scalar_pos.pth")
    out["scalar_pos_embed_pth"] = folder / "scalar_pos.pth"
    no_layers = {k: v for k, v in sd.items() if not k.startswith("backbone.layers.")}
    torch.save({"state_dict": no_layers}, folder / "no_layers.pth")
    out["no_layers_pth"] = folder / "no_layers.pth"
    deep_layer = {k.replace("backbone.layers.0.", "backbone.layers.999999999."): v for k, v in sd.items()}
    torch.save({"state_dict": deep_layer}, folder / "layer_1e9.pth")
    out["layer_index_1e9_pth"] = folder / "layer_1e9.pth"
    forged = "x\nERROR:root:forged log line"
    out["newline_name"] = _with_config(tiny, folder / "newline.safetensors", tensors={forged: torch.zeros(1)})
    long_names = {f"{'n' * 3000}{i}": torch.zeros(1) for i in range(100)}  # 300 KB of names
    out["long_names"] = _with_config(tiny, folder / "long_names.safetensors", tensors=long_names)
    out["missing_tensor"] = _with_config(tiny, folder / "missing.safetensors", drop=(k,))
    out["wrong_shape"] = _with_config(tiny, folder / "wrong_shape.safetensors", tensors={k: torch.zeros(3)})

    class _Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": sd, "x": _Evil()}, folder / "evil.pth")
    out["pickle_code_pth"] = folder / "evil.pth"
    hdr = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    (folder / "header_lies.safetensors").write_bytes(struct.pack("<Q", 10**12) + hdr + b"\0" * 4)
    out["header_1tb"] = folder / "header_lies.safetensors"
    (folder / "no_config.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 4)
    out["no_config"] = folder / "no_config.safetensors"
    (folder / "official.pth").unlink()
    return out
