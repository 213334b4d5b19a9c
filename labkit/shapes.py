"""Model shapes: the numbers the LoRA and memory estimates work from, in one torch-free place.

labkit.lora, labkit.memory and labkit.widgets all read these; the widgets import them on Colab
and in the ipywidgets-7 test without torch, which is why they live apart from the code that needs it.
The LoRA size estimate from a config (`estimate_lora_params`) is arithmetic on these shapes, so it
lives here too: labkit.memory (layer 3) uses it without importing labkit.lora (also layer 3);
labkit.lora re-exports it for the lessons.
"""

from __future__ import annotations

from collections.abc import Sequence

# The linear layers of a Llama-style block that LoRA can adapt.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Shapes of real model families, for the hardware table and for sizes given as a bare count.
PRESETS: dict[str, dict] = {
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, head_dim=64, tie_word_embeddings=True),
    "llama-3.2-3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, head_dim=128, tie_word_embeddings=True),
    "llama-2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       intermediate_size=11008, vocab_size=32000),
    "llama-3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=128256),
    "llama-2-13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                        intermediate_size=13824, vocab_size=32000),
    "llama-65b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=64,
                      intermediate_size=22016, vocab_size=32000),
    "llama-2-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                        intermediate_size=28672, vocab_size=32000),
}

# The course model's shape (SmolLM2-135M's config.json; tests compare it with the cached model's).
COURSE_MODEL_SHAPE: dict = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                num_key_value_heads=3, vocab_size=49152, head_dim=64, tie_word_embeddings=True)


# --------------------------------------------------------------------------------------------
# Estimating the LoRA size from a config, without weights

_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"}
_GPT2_LIKE = {"gpt2"}


def projection_shapes(config) -> dict[str, list[tuple[int, int]]]:
    """(in_features, out_features) of every LoRA-able projection in ONE decoder layer, by name.

    Llama-style (Llama, Mistral, Qwen2/3, SmolLM2, Gemma): q/o are hidden × heads·head_dim; k/v are
    hidden × kv_heads·head_dim (grouped-query attention makes them smaller); gate/up/down are the
    MLP. GPT-2 has fused projections: c_attn (hidden → 3·hidden), and two layers named c_proj
    (attention hidden → hidden, MLP 4·hidden → hidden), so "c_proj" means both.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = getattr(config, "model_type", None)
    if kind in _LLAMA_LIKE:
        hidden, heads = config.hidden_size, config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        inter = config.intermediate_size
        return {"q_proj": [(hidden, heads * head_dim)], "k_proj": [(hidden, kv_heads * head_dim)],
                "v_proj": [(hidden, kv_heads * head_dim)], "o_proj": [(heads * head_dim, hidden)],
                "gate_proj": [(hidden, inter)], "up_proj": [(hidden, inter)], "down_proj": [(inter, hidden)]}
    if kind in _GPT2_LIKE:
        hidden = config.n_embd
        inner = getattr(config, "n_inner", None) or 4 * hidden
        return {"c_attn": [(hidden, 3 * hidden)], "c_proj": [(hidden, hidden), (inner, hidden)],
                "c_fc": [(hidden, inner)]}
    raise NotImplementedError(
        f"estimate_lora_params knows Llama-style models ({', '.join(sorted(_LLAMA_LIKE))}) and GPT-2, "
        f"not model_type={kind!r}. Count on the real thing instead: build the model on the meta device "
        "(`with torch.device('meta'): AutoModelForCausalLM.from_config(config)`), add LoRA, and call "
        "count_parameters — no weights are loaded.")


def num_layers(config) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def estimate_lora_params(config, r: int = 16, target_modules: Sequence[str] = DEFAULT_TARGETS,
                         use_dora: bool = False) -> int:
    """The exact number of LoRA parameters PEFT will add, from a transformers config alone.

    Each targeted projection of shape in → out gets A (r × in) and B (out × r): r · (in + out)
    numbers, in every decoder layer. DoRA adds one magnitude per output feature (out more).
    """
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    shapes = projection_shapes(config)
    unknown = [t for t in target_modules if t not in shapes]
    if unknown:
        raise ValueError(f"Unknown target module(s) {unknown} for model_type "
                         f"{getattr(config, 'model_type', '?')!r}; known: {sorted(shapes)}.")
    per_layer = sum(r * (i + o) + (o if use_dora else 0) for t in set(target_modules) for i, o in shapes[t])
    return per_layer * num_layers(config)
