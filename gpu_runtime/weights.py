"""Model weights: seeded random ones by default, or a local safetensors checkpoint (HF names).

Nothing is ever downloaded. Random weights are drawn per tensor from a generator seeded by the
run's seed and the tensor's name, scaled by 1/sqrt(fan-in) (residual outputs further by
1/sqrt(2 * layers)) so activations stay finite through any depth.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from gpu_runtime.model import LlamaModel
from twin.errors import TwinError

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_RESIDUAL_OUT = ("o_proj", "down_proj")


@torch.inference_mode()
def init_random(model: LlamaModel, seed: int) -> None:
    cfg = model.cfg
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
            continue
        gen = torch.Generator(device=param.device)
        gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        fan_in = param.shape[1]
        if name == "embed_tokens.weight":
            fan_in = cfg.hidden_size if cfg.tie_word_embeddings else 1
        std = fan_in**-0.5
        if name.split(".")[-2] in _RESIDUAL_OUT:
            std /= (2 * cfg.num_layers) ** 0.5
        values = torch.randn(param.shape, generator=gen, device=param.device) * std
        param.copy_(values.to(param.dtype))


def hf_targets(model: LlamaModel) -> dict[str, tuple[str, slice]]:
    """Each HF tensor name -> (our parameter, the rows of it that tensor fills)."""
    cfg = model.cfg
    q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    full = slice(None)
    out = {"model.embed_tokens.weight": ("embed_tokens.weight", full)}
    out["model.norm.weight"] = ("norm.weight", full)
    if model.lm_head is not None:
        out["lm_head.weight"] = ("lm_head.weight", full)
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        out[hf + "self_attn.q_proj.weight"] = (ours + "qkv_proj.weight", slice(0, q))
        out[hf + "self_attn.k_proj.weight"] = (ours + "qkv_proj.weight", slice(q, q + kv))
        out[hf + "self_attn.v_proj.weight"] = (ours + "qkv_proj.weight", slice(q + kv, q + 2 * kv))
        out[hf + "self_attn.o_proj.weight"] = (ours + "o_proj.weight", full)
        out[hf + "mlp.gate_proj.weight"] = (ours + "gate_up_proj.weight", slice(0, inter))
        out[hf + "mlp.up_proj.weight"] = (ours + "gate_up_proj.weight", slice(inter, 2 * inter))
        out[hf + "mlp.down_proj.weight"] = (ours + "down_proj.weight", full)
        out[hf + "input_layernorm.weight"] = (ours + "input_layernorm.weight", full)
        out[hf + "post_attention_layernorm.weight"] = (
            ours + "post_attention_layernorm.weight",
            full,
        )
        if cfg.qk_norm:
            out[hf + "self_attn.q_norm.weight"] = (ours + "q_norm.weight", full)
            out[hf + "self_attn.k_norm.weight"] = (ours + "k_norm.weight", full)
    return out


def to_hf_state_dict(model: LlamaModel) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {hf: params[ours][rows].clone() for hf, (ours, rows) in hf_targets(model).items()}


def checkpoint_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise TwinError(f"{index}: not a safetensors index ({exc})") from None
        return [directory / s for s in shards]
    return sorted(directory.glob("*.safetensors"))


@torch.inference_mode()
def load_safetensors(model: LlamaModel, directory: str | Path) -> None:
    """Fill every parameter from the checkpoint; a missing or misshapen tensor is an error."""
    directory = Path(directory)
    files = checkpoint_files(directory)
    if not files:
        raise TwinError(f"--weights {directory}: no *.safetensors files in that directory")
    targets = hf_targets(model)
    params = dict(model.named_parameters())
    filled: set[str] = set()
    for path, name, tensor in _tensors(files, model.device):
        if name not in targets:
            if _ignorable(name, model):
                continue
            raise TwinError(
                f"{path.name}: tensor {name!r} has no place in a {model.cfg.model_type}"
                " model; is the checkpoint from the same architecture as --model?"
            )
        ours, rows = targets[name]
        dest = params[ours][rows]
        if tuple(dest.shape) != tuple(tensor.shape):
            raise TwinError(
                f"{path.name}: tensor {name!r} is {tuple(tensor.shape)}, the config needs "
                f"{tuple(dest.shape)}; --model and --weights describe different models"
            )
        dest.copy_(tensor.to(dest.dtype))
        filled.add(name)
    missing = sorted(set(targets) - filled)
    if missing:
        raise TwinError(
            f"--weights {directory}: {len(missing)} tensors missing, e.g. {missing[0]!r}"
        )


def _ignorable(name: str, model: LlamaModel) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return name == "lm_head.weight" and model.lm_head is None  # tied: the embedding serves


def _tensors(files: list[Path], device: torch.device) -> Iterator[tuple[Path, str, torch.Tensor]]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise TwinError(
            "--weights needs the safetensors package (pip install safetensors)"
        ) from None
    for path in files:
        try:
            handle = safe_open(str(path), framework="pt", device=str(device))
        except Exception as exc:  # the library raises several types for a bad file
            raise TwinError(f"{path}: not a readable safetensors file ({exc})") from None
        with handle as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield path, name, f.get_tensor(name)
