"""The deployability matrix: worker per model, failures recorded not fatal, JSON/markdown/HTML written."""

import json

import pytest

from lwdeploy.errors import LwdeployError
from lwdeploy.matrix import default_models, run_matrix, to_html, to_markdown


def test_default_models_one_per_family():
    from lwdeploy.models.registry import all_entries

    names = default_models()
    families = {e.info.family for e in all_entries()}
    assert len(names) == len(families) >= 20
    assert "ghostnet_100" in names and "mobilenet_v2_100" in names


def test_matrix_runs_and_records_failures(tmp_path):
    out = tmp_path / "m"
    # one real cell, and a resolution DiCENet cannot be built at: its cells must fail, explained, not crash
    # two models at once: rows still come back in the order asked for
    result = run_matrix(["mobilenet_v3_small_100", "dicenet_050"], ["tflite"], ["fp32"], out,
                        {"resolution": 48, "calib_samples": 4, "heldout_samples": 4}, timeout_s=600, jobs=2)
    assert [r["model"] for r in result["rows"]] == ["mobilenet_v3_small_100", "dicenet_050"]
    assert result["summary"]["jobs"] == 2
    # each worker's torch ops get its share of the cores, not all of them (two workers fought over them)
    import os

    assert {r["torch_threads"] for r in result["rows"]} == {max(1, (os.cpu_count() or 1) // 2)}
    rows = {r["model"]: r for r in result["rows"]}
    ok = rows["mobilenet_v3_small_100"]
    assert ok["ok"] and ok["size_mb"] > 0 and ok["latency_ms"] > 0 and ok["top1_agreement"] == 1.0
    # per-stage CPU seconds from the manifest: the slowest conversion stage is named in the table
    assert ok["convert_cpu_s"] > 0 and ok["stage_cpu_s"]["litert_convert"] > 0
    assert ok["slowest_stage"].split()[0] in ok["stage_cpu_s"]
    bad = rows["dicenet_050"]
    assert not bad["ok"] and "32" in bad["error"]
    assert result["summary"]["cells"] == 2 and result["summary"]["ok"] == 1
    # the whole tree's peak: at least the largest worker (sampled, so a worker's last spike may be missed)
    summary = result["summary"]
    assert summary["peak_rss_mb"] > 0.8 * summary["peak_worker_rss_mb"] > 100
    assert 100 < summary["peak_memory_mb"] <= summary["peak_rss_mb"]  # PSS: shared pages counted once
    assert all(0 < r["peak_pss_mb"] <= summary["peak_memory_mb"] for r in result["rows"] if r["ok"])
    saved = json.loads((out / "matrix.json").read_text())
    assert saved["summary"] == result["summary"]
    md = (out / "matrix.md").read_text()
    assert "| mobilenet_v3_small_100 | tflite | fp32 | ✅ |" in md and "## Failures" in md
    assert "slowest stage (CPU s)" in md and ok["slowest_stage"] in md
    assert "<table>" in (out / "matrix.html").read_text()


def test_matrix_bad_input(tmp_path):
    with pytest.raises(LwdeployError, match="unknown precision"):
        run_matrix(["ghostnet"], ["tflite"], ["int4"], tmp_path)
    with pytest.raises(LwdeployError, match="unknown model"):
        run_matrix(["ghostnett"], ["tflite"], ["fp32"], tmp_path)
    with pytest.raises(LwdeployError, match="--jobs 0"):
        run_matrix(["ghostnet"], ["tflite"], ["fp32"], tmp_path, jobs=0)


def _hold_memory(mb: int, ready, release):
    block = bytearray(mb * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
    ready.set()
    release.wait(30)


def test_tree_memory_counts_child_processes():
    import time

    from lwdeploy.matrix import TreeMemory, worker_context

    memory = TreeMemory(interval_s=0.05)
    before = memory.current_mb()
    memory.start()
    ctx = worker_context()  # as the matrix starts workers: forked by a fork server, not children of this process
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_memory, args=(300, ready, release))
    child.start()
    memory.roots.add(child.pid)
    try:
        assert ready.wait(120)
        time.sleep(0.3)
        assert memory.current_mb() > before + 280
    finally:
        release.set()
        child.join()
        memory.stop()
    assert memory.peak_mb > before + 280
    assert memory.child_peak_mb[child.pid] > 280  # the worker's own peak, though the fork server is its parent
    assert memory.peak_rss_sum_mb >= memory.peak_mb * 0.95  # RSS counts shared library pages once per process


def test_scheduler_runs_largest_graphs_first_and_never_two_heavy_ones_at_once():
    from lwdeploy.matrix import graph_sizes, heavy_models, next_model

    names = ["mobilenet_v2_100", "nasnet_a_mobile", "squeezenet_1_0", "pnasnet_5_mobile", "ghostnet_100"]
    sizes = graph_sizes(names)
    assert sizes["nasnet_a_mobile"] > sizes["ghostnet_100"] > sizes["mobilenet_v2_100"] > sizes["squeezenet_1_0"] > 0
    heavy = heavy_models(sizes)
    assert heavy == {"nasnet_a_mobile", "pnasnet_5_mobile"}
    pending = sorted(names, key=lambda m: -sizes[m])
    assert next_model(pending, {}, heavy) == "nasnet_a_mobile"
    assert next_model(pending[1:], {"nasnet_a_mobile": None}, heavy) == "ghostnet_100"  # PNASNet waits
    assert next_model(["pnasnet_5_mobile"], {"nasnet_a_mobile": None}, heavy) is None
    assert next_model(["pnasnet_5_mobile"], {"ghostnet_100": None}, heavy) == "pnasnet_5_mobile"


def test_graph_size_counts_ops_without_modules_of_their_own():
    from lwdeploy.matrix import graph_sizes

    # EdgeViT's attention math has no leaf modules: by leaf count (135 vs 178) it ranked below MobileNetV2,
    # though its export takes 2.4x as long (145 vs 62 s in the default matrix)
    sizes = graph_sizes(["edgevit_xxs", "mobilenet_v2_100", "no_such_model"])
    assert sizes["edgevit_xxs"] > 2 * sizes["mobilenet_v2_100"] > 0
    assert sizes["no_such_model"] == 0


def test_expected_peak_comes_from_finished_workers_of_the_same_kind():
    from lwdeploy.matrix import expected_peak_mb

    heavy = {"nasnet_a_mobile", "pnasnet_5_mobile"}
    assert expected_peak_mb("ghostnet_100", {}, heavy, 3000, 2) == 1500           # nothing finished: fair share
    done = {"nasnet_a_mobile": [{"peak_pss_mb": 1548}, {"peak_pss_mb": 1548}]}
    assert expected_peak_mb("ghostnet_100", done, heavy, 3000, 2) == 1548         # no light one yet: any kind
    done["squeezenet_1_0"] = [{"peak_pss_mb": 712}]
    done["dicenet_050"] = [{"peak_pss_mb": None, "peak_rss_mb": 900}]            # PSS not sampled: its RSS
    assert expected_peak_mb("ghostnet_100", done, heavy, 3000, 2) == 900          # a light model: light peaks
    assert expected_peak_mb("pnasnet_5_mobile", done, heavy, 3000, 2) == 1548     # a heavy one: heavy peaks


def test_renderers_escape_errors():
    result = {"summary": {"ok": 0, "cells": 1, "success_rate": 0.0, "wall_s": 1.0, "cpu_count": 2,
                          "peak_rss_mb": 1, "targets": ["coreml"], "precisions": ["int8"]},
              "rows": [{"model": "x", "target": "coreml", "precision": "int8", "ok": False,
                        "error": "unsupported op <aten.foo> in blocks.1"}]}
    assert "&lt;aten.foo&gt;" in to_html(result)
    assert "unsupported op <aten.foo> in blocks.1" in to_markdown(result)


def test_conversion_groups_share_int8_calibration_between_executorch_and_coreml():
    from pathlib import Path

    from lwdeploy.pipeline import ExportPlan, conversion_groups

    def groups(targets, int8, **options):
        return conversion_groups(ExportPlan("m", targets, Path("."), int8=int8, options=options))

    all3 = ["tflite", "executorch", "coreml"]
    assert groups(all3, True) == [["executorch", "coreml"], ["tflite"]]
    assert groups(all3, False) == [["executorch"], ["tflite"], ["coreml"]]
    # coremltools' own quantizer annotates differently: no sharing
    assert groups(all3, True, quantizer="coreml-native") == [["executorch"], ["tflite"], ["coreml"]]
    assert groups(["coreml", "tflite"], True) == [["tflite"], ["coreml"]]


def test_target_stem_names_fp16_and_coreml_delegate_artifacts():
    from pathlib import Path

    from lwdeploy.pipeline import ExportPlan, target_stem

    plan = ExportPlan("m", ["tflite"], Path("."), options={"fp16": True, "delegate": "coreml"})
    assert target_stem("m_fp32", "tflite", plan) == "m_fp16"
    assert target_stem("m_fp32", "coreml", plan) == "m_fp16"
    assert target_stem("m_fp32", "executorch", plan) == "m_fp32_coreml"
    assert target_stem("m_int8", "tflite", ExportPlan("m", [], Path("."), int8=True, options={"fp16": True})) == "m_int8"
    assert target_stem("m_fp32", "executorch", ExportPlan("m", [], Path("."))) == "m_fp32"


def test_manifest_input_layout_follows_nhwc_where_the_target_takes_it():
    from pathlib import Path

    from lwdeploy.pipeline import ExportPlan, input_layout

    nhwc = ExportPlan("m", ["tflite", "executorch", "coreml"], Path("."), options={"nhwc": True})
    assert [input_layout(t, nhwc) for t in nhwc.targets] == ["NHWC", "NHWC", "NCHW"]  # Core ML: an image input
    plain = ExportPlan("m", ["tflite", "executorch"], Path("."))
    assert [input_layout(t, plain) for t in plain.targets] == ["NCHW", "NCHW"]


def test_zoo_table_merges_matrix_folders_per_cell(tmp_path):
    from benchmarks.zoo_int8 import merged_cells

    def folder(name, cells):
        d = tmp_path / name / "artifacts"
        d.mkdir(parents=True)
        rows = []
        for target, precision in cells:
            art = d / f"m_{precision}.{target}"
            art.write_text("x")
            (d / f"m_{precision}.{target}.json").write_text(json.dumps({"artifact": {"from": name}}))
            rows.append({"model": "m", "target": target, "precision": precision, "ok": True, "artifact": str(art)})
        (tmp_path / name / "matrix.json").write_text(json.dumps({"rows": rows}))
        return tmp_path / name

    full = folder("all", [(t, p) for t in ("tflite", "executorch") for p in ("fp32", "int8")])
    rerun = folder("tflite_int8", [("tflite", "int8")])       # e.g. `--targets tflite --precisions int8`
    found = merged_cells([full, rerun])["m"]
    assert found["tflite"]["int8"]["artifact"]["from"] == "tflite_int8"
    assert found["tflite"]["fp32"]["artifact"]["from"] == "all"              # the other cells stay
    assert {p: m["artifact"]["from"] for p, m in found["executorch"].items()} == {"fp32": "all", "int8": "all"}


def test_zoo_table_fills_executorch_counts_of_kept_rows_from_their_files(monkeypatch):
    from benchmarks import zoo_int8

    read = []
    monkeypatch.setattr(zoo_int8, "_xnnpack_counts",
                        lambda path: read.append(str(path)) or {"transpose": 1, "quantize": 2, "dequantize": 2})
    kept = {"model": "old", "targets": {"executorch": {"int8": {"cpu_ms": 1.0}}}}
    timed = {"model": "new", "targets": {"executorch": {"int8": {"transpose": 0, "quantize": 1, "dequantize": 1}}}}
    found = {m: {"executorch": {"int8": {"artifact": {"path": f"/x/{m}_int8.pte"}}}} for m in ("old", "new")}
    zoo_int8._fill_structure({"rows": [kept, timed]}, found)
    assert kept["targets"]["executorch"]["int8"] == {"cpu_ms": 1.0, "transpose": 1, "quantize": 2, "dequantize": 2}
    assert timed["targets"]["executorch"]["int8"]["transpose"] == 0 and read == ["/x/old_int8.pte"]
    table = zoo_int8.markdown({"meta": {"host": "h", "cpus": 2, "threads": 1, "rounds": 1, "warmup": 1, "matrix": []},
                               "rows": [dict(kept, cnn=True)]})
    assert "| old | executorch | — | 1.00 | — | — | — | 1 | 2 | 2 |" in table


def test_artifacts_ab_times_each_file_and_refuses_what_is_not_an_artifact(tmp_path, capsys):
    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import torch
    from torch import nn

    from benchmarks.artifacts_ab import main
    from benchmarks.int8_bench import export_tflite

    x = torch.randn(1, 3, 16, 16)
    small = export_tflite(nn.Conv2d(3, 4, 1).eval(), x, tmp_path / "small.tflite", int8=False)
    large = export_tflite(nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(6)]).eval(), x,
                          tmp_path / "large.tflite", int8=False)
    assert main([str(small), str(large), "--resolution", "16", "--warmup", "2", "--rounds", "5",
                 "--json", str(tmp_path / "ab.json")]) == 0
    files = json.loads((tmp_path / "ab.json").read_text())["files"]
    assert [f["path"] for f in files] == [str(small), str(large)]
    assert all(f["cpu_median_ms"] >= 0 for f in files)
    (tmp_path / "notes.txt").write_text("x")
    assert main([str(tmp_path / "notes.txt")]) == 2
    assert "not a .tflite or .pte" in capsys.readouterr().err
