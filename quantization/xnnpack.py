"""ExecuTorch's XNNPACKQuantizer, minus the pattern annotators that cannot match the graph at hand, plus
int8 qparam sharing on every op that only moves values (shared_qparams.py).

Its conv-transpose(+BN) annotators build their pattern graphs by torch.export-ing small models on every
prepare_pt2e call, whether or not the graph holds a transposed convolution: ~1.6 of GhostNet's 4.5 CPU s in
prepare. A pattern none of whose operators occur in the graph matches nothing, so skipping it changes no
annotation (tests/test_quantization.py compares against the stock quantizer).
"""

from __future__ import annotations

from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

from lwdeploy.quantization.shared_qparams import share_qparams


class GraphAwareXNNPACKQuantizer(XNNPACKQuantizer):
    def _annotate_all_patterns(self, model, quantization_config, filter_fn=None, operator_target=None):
        present = {n.target for n in model.graph.nodes if n.op == "call_function"}
        present |= {getattr(t, "overloadpacket", t) for t in present}
        # an instance attribute shadows the class's list for this call only
        self.SUPPORTED_PATTERNS = [p for p in type(self).SUPPORTED_PATTERNS if p.op_overloads & present]
        try:
            return super()._annotate_all_patterns(model, quantization_config, filter_fn, operator_target)
        finally:
            del self.SUPPORTED_PATTERNS

    def annotate(self, model):
        model = super().annotate(model) or model
        # after XNNPACK's own propagation: the moves its list lacks (unflatten of a channel shuffle) and the
        # chains behind them run in int8 inside the delegate instead of float between Converts. Not above rank
        # 5: this int8 program is Core ML's too, and its quantize op refuses rank 6 (MobileViT's patch unfold)
        share_qparams(model, max_rank=5)
        return model
