"""The network's compute precision (node setting model.precision): the names, what "auto" means on this machine,
and the bf16 rebuild of a loaded network. No imports at module level: the settings read PRECISIONS at start-up."""

from __future__ import annotations

PRECISIONS = ("float32", "bfloat16", "auto")


def resolve_precision(precision: str) -> str:
    """"auto": bfloat16 where it is faster than float32 (train.bf16_is_fast: a GPU, or a CPU with AMX-BF16 under
    TensorFlow), else float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown (known: {', '.join(PRECISIONS)})")
    if precision == "auto":
        from .train import bf16_is_fast

        return "bfloat16" if bf16_is_fast() else "float32"
    return precision


def serving_model(model, precision: str):
    """The network to run at `precision` ("float32" or "bfloat16"): for bfloat16, the same layers and weights rebuilt
    under the `mixed_bfloat16` policy (bf16 compute, float32 variables); the output layers keep their own dtype (the
    softmax stays float32, as in training). Weights are stored float32 either way (retrain.save_model)."""
    if precision == "float32":
        return model
    import keras

    config = model.get_config()
    outputs = config["output_layers"]
    outputs = {o[0] for o in ([outputs] if isinstance(outputs[0], str) else outputs)}
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer" and layer["name"] not in outputs and "dtype" in layer["config"]:
            layer["config"]["dtype"] = "mixed_bfloat16"
    fast = keras.Model.from_config(config)
    fast.set_weights(model.get_weights())
    return fast
