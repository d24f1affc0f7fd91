"""Model shapes from a Hugging Face ``config.json`` (bundled names or any local path)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from policies.numbers import check_fields, check_number


class ConfigError(ValueError):
    """A model config that cannot be used; the message is one line naming the file and field."""


# Far beyond any released model: a larger value is a typo, and the cost model would overflow.
MAX_DIM = 2**20
MAX_VOCAB = 2**24
MAX_POSITIONS = 2**30

SIZE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "dtype_bytes",
)

# The Hugging Face config.json of each model, as published (the models the papers evaluate).
BUNDLED_CONFIGS = {
    name: f"{name}.json"
    for name in ("llama-3.1-8b", "qwen3-8b", "qwen2.5-3b", "qwen2.5-14b", "qwen3-14b")
} | {
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

    def __post_init__(self) -> None:
        # Every way of building a config (HF file, profile metadata, code) passes here.
        check_fields(self, ConfigError, lambda key: f"model config {self.name!r}: field {key!r}")
        for key in SIZE_FIELDS:
            check_number(
                getattr(self, key),
                f"model config {self.name!r}: field {key!r}",
                low=1,
                high=MAX_VOCAB if key == "vocab_size" else MAX_POSITIONS,
                error=ConfigError,
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model config {self.name!r}: num_kv_heads {self.num_kv_heads} must divide "
                f"num_heads {self.num_heads}"
            )

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
        def need(key: str, high: int = MAX_DIM) -> int:
            if key not in cfg:
                raise ConfigError(f"{source}: missing field {key!r} (a HF config.json has it)")
            return whole(key, cfg[key], high)

        def whole(key: str, value: Any, high: int = MAX_DIM) -> int:
            return check_number(
                value, f"{source}: field {key!r}", integer=True, low=1, high=high, error=ConfigError
            )

        def positive(key: str, default: float) -> float:
            value = cfg.get(key, default)
            return float(
                check_number(
                    value, f"{source}: field {key!r}", low=0.0, low_open=True, error=ConfigError
                )
            )

        # transformers 5 nests rope_theta and the scaling inside rope_parameters.
        rope = cfg.get("rope_parameters") or {}
        rope_scaling = cfg.get("rope_scaling")
        for key, value in (("rope_parameters", rope), ("rope_scaling", rope_scaling)):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{source}: field {key!r} must be an object, got {value!r}")
        if rope_scaling is None and rope.get("rope_type", "default") != "default":
            rope_scaling = rope
        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        kv_raw = cfg.get("num_key_value_heads")
        kv_heads = heads if kv_raw is None else whole("num_key_value_heads", kv_raw)
        if cfg.get("head_dim") is None:
            if hidden % heads:
                raise ConfigError(
                    f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads "
                    f"{heads}; give head_dim or fix the head count"
                )
            head_dim = hidden // heads
        else:
            head_dim = whole("head_dim", cfg["head_dim"])
        if kv_heads > heads or heads % kv_heads:
            raise ConfigError(
                f"{source}: num_key_value_heads {kv_heads} must divide num_attention_heads "
                f"{heads} (grouped-query attention shares each KV head among query heads)"
            )
        tie = cfg.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise ConfigError(f"{source}: field 'tie_word_embeddings' must be true or false")
        model_type = cfg.get("model_type", "llama")
        if not isinstance(model_type, str):
            raise ConfigError(f"{source}: field 'model_type' must be a string, got {model_type!r}")
        return ModelConfig(
            name=name or str(cfg.get("_name_or_path") or model_type),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_layers=need("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=need("vocab_size", MAX_VOCAB),
            tie_word_embeddings=tie,
            rms_norm_eps=positive("rms_norm_eps", 1e-5),
            rope_theta=float(
                check_number(
                    cfg.get("rope_theta", rope.get("rope_theta", 10000.0)),
                    f"{source}: field 'rope_theta'",
                    low=0.0,
                    low_open=True,
                    error=ConfigError,
                )
            ),
            rope_scaling=rope_scaling,
            qk_norm=model_type == "qwen3",
            max_position_embeddings=whole(
                "max_position_embeddings", cfg.get("max_position_embeddings", 8192), MAX_POSITIONS
            ),
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object with the model's fields")
    return ModelConfig.from_hf(
        cfg, name=path.parent.name if path.name == "config.json" else path.stem, source=str(path)
    )
