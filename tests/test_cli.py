"""The headless CLI contract: progress on stderr, the MP4's path as the last line of stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.media import decode_video

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "app.py", "generate", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
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


def test_image_makes_it_image_to_video(tmp_path):
    picture = tmp_path / "portrait.png"
    Image.fromarray(np.full((300, 200, 3), 180, np.uint8)).save(picture)
    done = run_cli("--model", "test-tiny", "--prompt", "waves", "--image", str(picture), "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    frames, _ = decode_video(path)
    assert frames.shape[1:3] == (96, 64)  # portrait picture -> portrait preset
    assert '"task": "i2v"' in path.with_suffix(".json").read_text()


def test_bad_input_exits_2_with_the_reason_and_writes_nothing(tmp_path):
    done = run_cli("--model", "test-tiny", "--prompt", "x", "--size", "100x64", "--out-dir", str(tmp_path))
    assert done.returncode == 2
    assert "multiples of 32 px" in done.stderr and done.stdout == ""
    assert not any(tmp_path.iterdir())
    done = run_cli("--model", "test-tiny", "--prompt", "x", "--size", "wide")
    assert done.returncode == 2 and "--size must look like 1280x704" in done.stderr


def test_an_attention_backend_this_machine_cannot_run_exits_2_with_the_reason(tmp_path):
    done = run_cli("--model", "test-tiny", "--prompt", "x", "--attention", "sage", "--out-dir", str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert "error: The 'sage' attention backend needs a CUDA GPU" in done.stderr and "Traceback" not in done.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_an_output_folder_that_cannot_be_written_is_refused_before_generating(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    done = run_cli("--model", "test-tiny", "--prompt", "x", "--out-dir", str(a_file))
    assert done.returncode == 2 and "is a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    assert "denoise" not in done.stderr  # refused before any generation
    done = run_cli("--model", "test-tiny", "--prompt", "x", "--out-dir", str(a_file / "inside"))
    assert done.returncode == 2 and "cannot be written" in done.stderr and "Traceback" not in done.stderr
