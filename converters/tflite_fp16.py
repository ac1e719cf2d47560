"""TFLite float16 weights: the standard post-training float16 form (as TFLiteConverter's
`target_spec.supported_types = [tf.float16]` writes it).

Weights of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV are stored as FLOAT16 constants,
each followed by a DEQUANTIZE op to float32; activations and arithmetic stay float32. XNNPACK recognises
the FLOAT16 → DEQUANTIZE weight pattern and packs the weights itself, so on CPU the model runs as float32
at half the size; GPU delegates may compute in fp16. The rewrite is done by ai-edge-quantizer's
FLOAT_CASTING algorithm on the converted flatbuffer (litert-torch has no fp16 switch for non-LLM models).
"""

from __future__ import annotations

_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE")


def float16_weights(model: bytes) -> bytes:
    """`model` (a float32 .tflite) with float16 weights + DEQUANTIZE ops; raises if nothing was cast."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(bytearray(model))
    for op in _OPS:
        q.update_quantization_recipe(
            regex=".*",
            operation_name=getattr(qtyping.TFLOperationName, op),
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                compute_precision=qtyping.ComputePrecision.FLOAT,   # weight-only: float32 arithmetic
                explicit_dequantize=True,                           # FLOAT16 const → DEQUANTIZE → op
            ),
            algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
        )
    result = q.quantize(enable_progress_report=False)
    return bytes(result.quantized_model)
