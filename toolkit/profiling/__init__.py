"""lwdeploy.profiling — per-layer latency reports that name PyTorch modules.

One report schema (lwdeploy/schemas/report.schema.json) for every harness:
- LiteRT (.tflite): the native runner (android_app/runner, built on first use) on the host or, over adb, a phone;
- ExecuTorch (.pte): the executorch runtime with ETDump, read by the devtools Inspector with the ETRecord;
- Core ML (.mlpackage/.mlmodel): a static per-op cost estimate (kind = "estimate": Linux has no Core ML runtime).
"""

from .report import coverage, load_report, validate_report

__all__ = ["coverage", "load_report", "profile_artifact", "validate_report"]


def profile_artifact(*args, **kwargs):
    from .profile import profile_artifact as _profile

    return _profile(*args, **kwargs)
