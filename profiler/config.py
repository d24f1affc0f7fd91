"""Model shapes from a Hugging Face ``config.json`` (bundled names or any local path)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A model config that cannot be used; the message is one line naming the file and field."""


BUNDLED_CONFIGS = {
    "llama-3.1-8b": "llama-3.1-8b.json",
    "qwen3-8b": "qwen3-8b.json",
    # Qwen3-shaped, 2 layers of width 64: serves on a CPU in seconds, with random weights
    "tiny": "tiny.json",
}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    qk_norm: bool = False
    max_position_embeddings: int = 8192
    dtype_bytes: int = 2
    model_type: str = "llama"

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        return self.num_layers * 2 * self.kv_size * self.dtype_bytes

    @property
    def params_per_layer(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        return attn + 3 * h * i + 2 * h

    @property
    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        return self.num_layers * self.params_per_layer + embed + head + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_hf(cfg: dict[str, Any], name: str = "", source: str = "config") -> ModelConfig:
        def need(key: str) -> Any:
            if key not in cfg:
                raise ConfigError(f"{source}: missing field {key!r} (a HF config.json has it)")
            value = cfg[key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(
                    f"{source}: field {key!r} must be a positive integer, got {value!r}"
                )
            return value

        # transformers 5 nests rope_theta and the scaling inside rope_parameters.
        rope = cfg.get("rope_parameters") or {}
        rope_scaling = cfg.get("rope_scaling")
        if rope_scaling is None and rope.get("rope_type", "default") != "default":
            rope_scaling = rope
        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        head_dim = cfg.get("head_dim") or hidden // heads
        model_type = str(cfg.get("model_type", "llama"))
        return ModelConfig(
            name=name or str(cfg.get("_name_or_path") or model_type),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_layers=need("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            vocab_size=need("vocab_size"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rope_scaling=rope_scaling,
            qk_norm=model_type == "qwen3",
            max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
            model_type=model_type,
        )


def load_model_config(spec: str | Path) -> ModelConfig:
    """A bundled name (``llama-3.1-8b``, ``qwen3-8b``, ``tiny``), a config.json, or a directory."""
    text = str(spec)
    if text in BUNDLED_CONFIGS:
        raw = resources.files("profiler").joinpath("configs", BUNDLED_CONFIGS[text]).read_text()
        return ModelConfig.from_hf(json.loads(raw), name=text, source=f"bundled config {text}")
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"model {text!r} is neither a bundled config ({', '.join(BUNDLED_CONFIGS)}) "
            "nor a config.json file or a directory holding one"
        )
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object with the model's fields")
    return ModelConfig.from_hf(
        cfg, name=path.parent.name if path.name == "config.json" else path.stem, source=str(path)
    )
