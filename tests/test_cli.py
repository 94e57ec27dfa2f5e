"""The headless CLI contract: progress on stderr, the MP4's path as the last line of stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.media import decode_video

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, command: str = "generate", home: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"WAN_STUDIO_HOME": str(home)} if home else {}))
    return subprocess.run(
        [sys.executable, "app.py", command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_text_to_video_prints_the_clip_path_last(tmp_path):
    done = run_cli("--model", "test-tiny", "--prompt", "a red cat", "--frames", "13", "--seed", "9",
                   "--out-dir", str(tmp_path), "--offline")  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path and path.suffix == ".mp4"
    frames, fps = decode_video(path)
    assert frames.shape == (13, 64, 96, 3) and fps == 8
    assert "denoise" in done.stderr and "4/4" in done.stderr  # a progress bar on stderr
    assert "seed 9" in done.stderr


def test_image_makes_it_image_to_video(tmp_path, capsys):
    picture = tmp_path / "portrait.png"
    Image.fromarray(np.full((300, 200, 3), 180, np.uint8)).save(picture)
    code, out, err = cli_here(capsys, "--model", "test-tiny", "--prompt", "waves", "--image", str(picture),
                              "--out-dir", str(tmp_path))  # fmt: skip
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    frames, _ = decode_video(path)
    assert frames.shape[1:3] == (96, 64)  # portrait picture -> portrait preset
    assert '"task": "i2v"' in path.with_suffix(".json").read_text()


def cli_here(capsys, *args: str) -> tuple[int, str, str]:
    """`generate` run in this process (no interpreter start): (exit code, stdout, stderr). The refusals below
    need no subprocess: the one above shows the real command's contract."""
    from studio.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_input_exits_2_with_the_reason_and_writes_nothing(tmp_path, capsys):
    code, out, err = cli_here(capsys, "--model", "test-tiny", "--prompt", "x", "--size", "100x64", "--out-dir",
                              str(tmp_path))  # fmt: skip
    assert code == 2
    assert "multiples of 32 px" in err and out == ""
    assert not any(tmp_path.iterdir())
    code, _, err = cli_here(capsys, "--model", "test-tiny", "--prompt", "x", "--size", "wide")
    assert code == 2 and "--size must look like 1280x704" in err


def test_an_attention_backend_this_machine_cannot_run_exits_2_with_the_reason(tmp_path, capsys):
    code, out, err = cli_here(capsys, "--model", "test-tiny", "--prompt", "x", "--attention", "sage", "--out-dir",
                              str(tmp_path))  # fmt: skip
    assert code == 2 and out == ""
    assert "error: The 'sage' attention backend needs a CUDA GPU" in err and "Traceback" not in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_an_output_folder_that_cannot_be_written_is_refused_before_generating(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    code, _, err = cli_here(capsys, "--model", "test-tiny", "--prompt", "x", "--out-dir", str(a_file))
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err
    assert "denoise" not in err  # refused before any generation
    code, _, err = cli_here(capsys, "--model", "test-tiny", "--prompt", "x", "--out-dir", str(a_file / "inside"))
    assert code == 2 and "cannot be written" in err and "Traceback" not in err


def lora_file(path: Path) -> Path:
    from diffusers import WanTransformer3DModel

    from pipelines.testmodels import ensure_test_model, lora_weights, save_lora

    model = WanTransformer3DModel.from_pretrained(ensure_test_model("test-tiny") / "transformer")
    return save_lora(lora_weights(model, seed=2, scale=0.2), path, "comfyui")


def test_loras_fast_mode_and_the_step_cache_from_the_command_line(tmp_path, capsys):
    lora = lora_file(tmp_path / "a@b" / "my:style.safetensors")  # a colon or an '@' in the path is the path's
    done = run_cli("--model", "test-tiny", "--prompt", "x", "--lora", f"{lora}:0.5@high", "--lora", str(lora),
                   "--cache", "first-block:0.1", "--out-dir", str(tmp_path / "a"), "--offline")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "LoRA my:style.safetensors x0.5 (high), LoRA my:style.safetensors x1 (high)" in done.stderr
    sidecar = json.loads(Path(done.stdout.strip().splitlines()[-1]).with_suffix(".json").read_text())
    chosen = [(lora["strength"], lora["experts"]) for lora in sidecar["settings"]["loras"]]
    assert chosen == [(0.5, "high"), (1, "high")]
    assert sidecar["settings"]["cache"] == {"kind": "first-block", "threshold": 0.1}

    code, _, err = cli_here(capsys, "--model", "test-tiny", "--prompt", "x", "--fast", "--steps", "40", "--out-dir",
                            str(tmp_path / "b"))  # fmt: skip
    assert code == 0, err
    assert "3 steps, guidance 1" in err and "Fast mode (test distilled checkpoint" in err
    assert "3/3" in err

    for args, fragment in [
        (["--lora", "nowhere.safetensors"], "--lora nowhere.safetensors: no such file"),
        (["--lora", f"{lora}@middle"], "no such file (give a path or a file name in the LoRA folder, then"),
        (["--lora", f"{lora}:9"], "must be from -4 to 4"),
        (["--cache", "first-block:lots"], "the threshold after ':' must be a number"),
        (["--cache", "magcache"], "calibrate-cache --model test-tiny"),
        (["--model", "test-tiny-a14b", "--lora", str(lora)], "was made for the tiny TI2V test layout"),
    ]:  # refused before anything loads: in this process, as the subprocess runs above showed the exit path
        code, stderr = cli_in_process(capsys, "--model", "test-tiny", "--prompt", "x", *args, "--out-dir",
                                      str(tmp_path / "c"))  # fmt: skip
        assert code == 2 and fragment in stderr, (args, stderr)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.mp4"))


def cli_in_process(capsys, *args: str) -> tuple[int, str]:
    """The CLI's exit code and stderr, run in this process (for refusals: nothing loads, so it is quick)."""
    code, _, err = cli_here(capsys, *args)
    return code, err


def test_calibrate_cache_records_ratios_and_then_magcache_runs(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    done = run_cli("--model", "test-tiny", "--steps", "6", "--offline", command="calibrate-cache", home=home)
    assert done.returncode == 0, done.stderr
    saved = json.loads(Path(done.stdout.strip().splitlines()[-1]).read_text())
    assert saved["model"] == "test-tiny" and saved["steps"] == 6
    assert len(saved["mag_ratios"]) == 6 and saved["mag_ratios"][0] == 1.0
    assert all(ratio > 0 for ratio in saved["mag_ratios"])
    assert "Copy these values" not in done.stdout + done.stderr  # diffusers' own printout is not shown
    monkeypatch.setenv("WAN_STUDIO_HOME", str(home))  # the calibration saved there is found in this process too
    code, _, err = cli_here(capsys, "--model", "test-tiny", "--prompt", "x", "--cache", "magcache", "--out-dir",
                            str(tmp_path))  # fmt: skip
    assert code == 0, err
    assert "step cache magcache" in err
    from app import main

    capsys.readouterr()
    assert main(["calibrate-cache", "--model", "test-tiny-a14b"]) == 2
    assert "single-transformer models" in capsys.readouterr().err


def test_exit_codes_1_for_a_failure_and_130_for_an_interrupt_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    from pipelines.manager import OutOfMemoryError, PipelineManager

    def out_of_memory(self, request, **kwargs):
        raise OutOfMemoryError("Out of GPU memory at 96x64 (test). Memory was freed: try fewer frames.")

    monkeypatch.setattr(PipelineManager, "generate", out_of_memory)
    code, stderr = cli_in_process(capsys, "--model", "test-tiny", "--prompt", "x", "--out-dir", str(tmp_path))
    assert code == 1 and "error: Out of GPU memory" in stderr and "Traceback" not in stderr

    def interrupted(self, request, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PipelineManager, "generate", interrupted)
    code, stderr = cli_in_process(capsys, "--model", "test-tiny", "--prompt", "x", "--out-dir", str(tmp_path))
    assert code == 130 and "interrupted: nothing was written" in stderr
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob("*.json"))


def test_watermark_profile_and_second_guidance_flags_reach_the_clip(tmp_path, capsys):
    from library import provenance

    code, stderr = cli_in_process(capsys, "--model", "test-tiny-a14b", "--prompt", "two experts", "--steps", "2",
                                  "--guidance-2", "2.5", "--profile", "cpu", "--watermark", "--seed", "4",
                                  "--out-dir", str(tmp_path), "--offline")  # fmt: skip
    assert code == 0, stderr
    (video,) = tmp_path.glob("*.mp4")
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar["settings"]["guidance_scale_2"] == 2.5 and sidecar["memory_profile"] == "cpu"
    # recorded and bound to the manifest (a 96x64 clip is below the mark's 128-pixel tile: the pixels are read
    # back on clips of a real size in tests/test_soft_binding.py)
    mark = sidecar["provenance"]["watermark"]
    assert provenance.verify_file(video).declared["watermark"] == mark
