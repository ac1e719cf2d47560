"""lwdeploy — deploy lightweight vision networks to TFLite/LiteRT, Core ML and ExecuTorch, with proof."""

__version__ = "0.1.0"

from .errors import LwdeployError  # noqa: E402

__all__ = ["LwdeployError", "__version__", "export"]


def export(*args, **kwargs):
    """Model → (prune) → (quantize) → convert → verify; see lwdeploy.pipeline.export."""
    from .pipeline import export as _export

    return _export(*args, **kwargs)
