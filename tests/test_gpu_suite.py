"""The GPU benchmark cannot rot between GPU loans: its --tiny mode runs every section that needs no CUDA on
the test model, here on the CPU, and must leave a complete JSON; a budget too short for a section skips it
and still leaves the JSON; the FLOP count behind its MFU figures is the real model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["env", "gemm", "build", "attention", "overhead", "vae", "lora", "fast", "compile", "long_take", "capped",
            "profiles", "post"]  # fmt: skip


def run_suite(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHON=sys.executable, OUT=str(tmp_path))
    done = subprocess.run(
        ["bash", "bench/gpu_suite.sh", "--tiny", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    data = json.loads((tmp_path / "gpu_suite.json").read_text())
    return done, data


def test_tiny_mode_runs_every_section_that_needs_no_cuda_and_writes_a_complete_json(tmp_path):
    done, data = run_suite(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert data["complete"] is True and list(data["sections"]) == SECTIONS
    sections = data["sections"]
    cuda_only = ("gemm", "capped", "profiles")
    assert all(sections[name]["status"] == "skipped: needs CUDA" for name in cuda_only)
    assert all(sections[name]["status"] == "ok" for name in SECTIONS if name not in cuda_only), sections
    assert sections["env"]["flops_per_cfg_step"] > 0
    step = sections["attention"]["backends"]["sdpa"]["s_per_cfg_step"]
    assert step > 0 and sections["attention"]["auto_picks"] == "sdpa"
    overhead = sections["overhead"]
    # the ratio compares like with like: our run and the plain diffusers call made the same clip
    same = overhead["same_clip"]
    assert same["same_shape"] and same["max_diff"] <= 1 and same["mean_diff"] < 0.05, same
    assert overhead["ratio"] > 0
    assert {"encode_s", "first_step_s", "step_s_mean", "decode_s", "to_host_s"} <= set(overhead["stages"])
    assert 0 < overhead["preview_share_of_step"] < 5
    vae = sections["vae"]
    assert vae["bfloat16"]["max_abs_diff"] > 0 and vae["float32_tiled"]["decode_s"] > 0
    assert vae["float32"]["frames_before_s"] > 0 and vae["float32"]["frames_after_s"] > 0
    lora = sections["lora"]
    assert lora["fused"] is True and lora["unfused_s_per_cfg_step"] > 0 and lora["fused_s_per_cfg_step"] > 0
    fast = sections["fast"]
    assert (fast["steps"], fast["guidance"]) == (3, 1.0) and fast["preset"].startswith("test distilled")
    # a speed-up is a benchmark figure, not a test verdict (a loaded CI machine made it 0.73): recorded, not judged
    assert fast["speedup_end_to_end"] > 0 and 0 < fast["decode_share"] < 1
    assert sections["compile"]["compiled_s_per_cfg_step"] > 0
    take = sections["long_take"]
    # windows of 21 frames (the test model's default K = 9 needs at least 4 x 2 + 1 more than it shares) at the
    # suite's size: a single clip, then takes of 2 and 4 windows that handed exactly their planned frames
    assert (take["window_frames"], take["size"], take["steps"]) == (21, "96x64", 4)
    assert take["single"]["s"] > 0 and take["single"]["frames"] == 21
    for windows, planned in ((2, 2 * 21 - 9), (4, 4 * 21 - 3 * 9)):
        made = take[f"take_{windows}"]
        assert (made["windows"], made["overlap"], made["planned_frames"]) == (windows, 9, planned)
        assert made["frames"] == planned  # what on_window was handed, counted
        assert made["conditioning"] == ["prompt"] + ["clean-latents"] * (windows - 1)
        assert made["continued_by"] == "test-tiny"
        assert len(made["window_s"]) == windows and all(s > 0 for s in made["window_s"])
        assert made["s"] == pytest.approx(sum(made["window_s"]), abs=0.01) and made["s_per_window"] > 0
        assert made["peak_allocated_gb"] is None  # GPU memory only on CUDA
    assert take["single"]["peak_allocated_gb"] is None and "peak_4_over_2" not in take
    assert take["continued_window_s"] == pytest.approx(sum(take["take_4"]["window_s"][1:]) / 3, abs=0.002)
    assert take["continued_over_single"] > 0 and take["s_per_window_over_single"] > 0  # figures, not verdicts
    post = sections["post"]
    assert post["upscale_x2_96x64_test_fps"] > 0 and post["interpolate_x2_96x64_test_fps"] > 0
    assert "attention" in done.stdout and "overhead" in done.stdout  # the summary table at the end


def test_a_budget_too_short_skips_sections_and_still_leaves_the_json(tmp_path):
    done, data = run_suite(tmp_path, "--budget-s", "3")
    assert done.returncode == 0 and data["complete"] is True
    statuses = {name: r["status"] for name, r in data["sections"].items()}
    assert statuses["env"] == "ok"
    assert statuses["build"].startswith("skipped: needs about")
    assert statuses["overhead"] == "skipped: the model could not be built"


def test_the_flop_count_is_the_real_models():
    """1.04 PFLOP per CFG step for TI2V-5B at 1280x704x121 (what the issue's 60 % MFU goal assumes)."""
    sys.path.insert(0, str(ROOT))
    from bench.gpu_suite import flops_per_cfg_step
    from pipelines.testmodels import FULL_SIZE_LAYOUTS, full_size_components

    assert "Wan-AI/Wan2.2-TI2V-5B-Diffusers" in FULL_SIZE_LAYOUTS
    parts = full_size_components("Wan-AI/Wan2.2-TI2V-5B-Diffusers", device="meta")

    class Pipe:  # the three things the counter reads
        transformer, vae = parts["transformer"], parts["vae"]

        class config:
            expand_timesteps = True

    assert flops_per_cfg_step(Pipe, 1280, 704, 121) == pytest.approx(1.04e15, rel=0.01)


def test_a_section_that_says_why_it_measured_nothing_is_not_reported_ok():
    import torch

    from bench.gpu_suite import Suite

    suite = Suite(None, 60, {}, torch.device("cpu"))
    said = suite.run("fast", 1, lambda r: r.update(status="skipped: no fast preset for this model"))
    assert said["status"] == "skipped: no fast preset for this model"
    assert suite.run("env", 1, lambda r: r.update(figure=1))["status"] == "ok"
