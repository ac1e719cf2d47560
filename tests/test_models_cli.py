"""`lwdeploy models`: table, detail, --json (with counted numbers), --markdown, clear errors."""

from __future__ import annotations

import json

from lwdeploy.models import list_models


def test_models_table_lists_the_zoo(cli):
    code, out, err = cli("models")
    assert code == 0, err
    assert f"{len(list_models())} variants" in out
    for name in ("efficientnet_lite0", "ghostnet_100", "mobilenet_v3_small_100"):
        assert name in out


def test_models_family_filter_and_count(cli):
    code, out, err = cli("models", "--family", "mobilenetv3", "--count")
    assert code == 0, err
    assert "mobilenet_v3_large_100" in out and "ghostnet" not in out
    assert "ours" in out


def test_models_detail_has_counted_numbers(cli):
    code, out, err = cli("models", "ghostnet")          # short name → ghostnet_100
    assert code == 0, err
    assert "ghostnet_100" in out and "params_m_counted" in out and "macs_m_counted" in out


def test_models_json_has_all_metadata_and_counts(cli):
    code, out, err = cli("models", "--json", "--family", "shufflenetv2")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [n for n in list_models() if n.startswith("shufflenet_v2")]
    for r in rows:
        assert {"family", "year", "paper", "resolution", "params_m", "macs_m", "top1", "mean", "std",
                "params_m_counted", "macs_m_counted"} <= set(r)
        assert abs(r["params_m_counted"] / r["params_m"] - 1) < 0.05


def test_models_json_single(cli):
    code, out, _ = cli("models", "efficientnet_lite0", "--json")
    row = json.loads(out)
    assert row["name"] == "efficientnet_lite0" and row["has_pretrained"] is True
    assert row["mean"] == [0.5, 0.5, 0.5]


def test_models_markdown_table(cli):
    code, out, _ = cli("models", "--markdown", "--family", "mnasnet")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("| Model |") and lines[1].startswith("|---")
    assert len(lines) == 2 + len(list_models("mnasnet"))
    assert "`mnasnet_a1`" in out and "3.90 / 3.89" in out


def test_unknown_model_is_one_line_error(cli):
    code, out, err = cli("models", "mobilenet_v9")
    assert code == 2
    assert err.strip().startswith("error: unknown model") and "Traceback" not in err


def test_unknown_family_is_one_line_error(cli):
    code, _, err = cli("models", "--family", "resnext")
    assert code == 2 and "no family matches" in err


def test_models_command_does_not_import_torch_at_import_time():
    import subprocess
    import sys

    code = "import sys, lwdeploy.commands.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_readme_zoo_table_is_generated_and_current(cli):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- zoo:start -->\n", 1)[1].split("\n<!-- zoo:end -->", 1)[0]
    code, out, _ = cli("models", "--markdown")
    assert code == 0
    assert block.strip() == out.strip(), "README zoo table is stale: regenerate with `lwdeploy models --markdown`"
