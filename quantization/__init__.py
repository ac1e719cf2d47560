"""lwdeploy.quantization — pruning, target-aware lowering, PT2E int8 quantization, calibration data."""

from .pt2e import QUANTIZER_BUILDERS, QuantizedModel, export_options, quantize

__all__ = ["QUANTIZER_BUILDERS", "QuantizedModel", "export_options", "quantize"]
