"""tools/device_check.sh --dry-run: every step of the device run, on the CPU at tiny sizes."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import device_bench  # noqa: E402
import device_unpack  # noqa: E402

STAGES = ("install", "plan", "bench", "experiments", "nbval", "pack")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if os.environ.get("DEVICE_CHECK_RUNNING"):
        pytest.skip("inside a device run: the dry run would only repeat it")
    tmp = tmp_path_factory.mktemp("dry-run")
    env = dict(os.environ, OUT=str(tmp / "out"), TMPDIR=str(tmp), PYTHON=sys.executable)
    env.pop("BOOK_PROFILE", None)
    proc = subprocess.run([str(ROOT / "tools" / "device_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc, tmp / "out"


def test_dry_run_passes_every_stage(dry_run):
    proc, out = dry_run
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    for stage in STAGES:
        line = next((s for s in summary.splitlines() if s.startswith(stage)), "")
        assert " ok " in line + " ", f"stage {stage}: {line!r}\n{summary}"


def test_dry_run_out_folder_fits_the_device_tool(dry_run):
    _, out = dry_run
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files), files  # 8 files, no folders
    assert {f.name for f in files} >= {"summary.txt", "plan.json", "bench.json", "results.tar.gz",
                                       "BENCHMARKS.md", "nbval.log", "lessons.jsonl"}


def test_dry_run_results_and_benchmarks(dry_run):
    _, out = dry_run
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        slug = next(n.split("/")[0] for n in names if n.endswith("manifest.json"))
        manifest = json.load(tar.extractfile(f"{slug}/manifest.json"))
    assert all(n == slug or n.startswith(f"{slug}/") for n in names)  # the device's folder, nothing else
    assert {f"{slug}/dry-run/d8.json", f"{slug}/dry-run/d16.json"} <= names
    assert manifest["sweeps"] == {"dry-run": ["d16", "d8"]} and manifest["nbval"]["status"] == 0
    assert [r["failure"] for r in manifest["lessons"]] == [None]
    bench = json.loads((out / "bench.json").read_text())
    for name in ("flash", "mfu", "moe"):
        assert isinstance(bench[name], list), bench[name]  # a dict means it failed
    assert bench["flash"][0]["relative error"] < 1e-4 and bench["moe"][0]["relative error"] < 1e-5
    text = (out / "BENCHMARKS.md").read_text()
    assert f"<!-- device: {slug} -->" in text and "MoE sorted dispatch" in text


def test_per_expert_loop_equals_sorted_dispatch():
    from book.moe import MoE

    torch.manual_seed(0)
    moe = MoE(16, 32, n_experts=6, k=2).eval()
    x = torch.randn(3, 40, 16)
    with torch.no_grad():
        assert torch.allclose(device_bench.per_expert_loop(moe, x), moe(x), atol=1e-5)


def test_lessons_stop_at_the_deadline(tmp_path):
    import nbformat

    nb = device_bench._notebook([("import time\ntime.sleep(600)", None)])
    path = tmp_path / "09_slow" / "slow.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    log = tmp_path / "log.jsonl"
    rc = device_bench.run_lessons([str(path)], tmp_path / "cache", log, jobs=1, deadline_s=1.0)
    assert rc == 124
    assert device_bench.read_log(log)[-1]["reason"] == "deadline"


def test_unknown_argument_is_refused():
    proc = subprocess.run([str(ROOT / "tools" / "device_check.sh"), "--fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr


def test_unpack_puts_results_and_the_gpu_section_in_place(dry_run, tmp_path):
    _, out = dry_run
    (tmp_path / "results" / "cpu-2-cores").mkdir(parents=True)
    slugs = device_unpack.unpack_results(out / "results.tar.gz", tmp_path / "results")
    assert len(slugs) == 1 and (tmp_path / "results" / slugs[0] / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "results" / slugs[0] / "dry-run").iterdir()) == ["d16.json", "d8.json"]


def test_merge_keeps_other_sections_and_replaces_the_gpu_one(tmp_path):
    cpu = "<!-- device: cpu-2-cores -->\n## CPU\nmine\n<!-- end device -->\n"
    old = "<!-- device: gpu-nvidia-h200 -->\n## GPU\nold\n<!-- end device -->\n"
    new = "<!-- device: gpu-nvidia-h200 -->\n## GPU\nnew\n<!-- end device -->\n"
    (tmp_path / "BENCHMARKS.md").write_text(cpu + old)
    (tmp_path / "back.md").write_text("<!-- device: cpu-16-cores -->\nx\n<!-- end device -->\n" + new)
    assert device_unpack.merge_sections(tmp_path / "back.md", tmp_path / "BENCHMARKS.md") == ["gpu-nvidia-h200"]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "mine" in text and "new" in text and "old" not in text and "cpu-16-cores" not in text


def test_unpack_refuses_paths_outside_the_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    (tmp_path / "f").write_text("x")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "f", arcname="../escape")
    with pytest.raises(SystemExit, match="outside"):
        device_unpack.unpack_results(bad, tmp_path / "results")
