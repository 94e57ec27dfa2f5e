"""Content Credentials and the watermark, read back from the files the studio wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library import provenance, watermark
from library.clips import ClipOptions, read_sidecar, save_clip
from library.film import export_film
from library.media import encode_mp4
from library.storyboard import Shot, Storyboard
from pipelines.request import GenerationRequest, validate_request
from tests.media import decode_video, moov_before_mdat, probe

ROOT = Path(__file__).resolve().parents[1]
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@pytest.fixture(scope="module")
def result(manager):
    request = validate_request(GenerationRequest(prompt="a red cat on a roof", model="test-tiny", seed=5), "test-tiny")
    return manager.generate(request)


def flip_media_byte(path: Path, target: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[data.find(b"mdat") + 100] ^= 0xFF
    target.write_bytes(data)
    return target


def test_a_clip_is_signed_as_ai_generated_and_tampering_shows(result, out_dir, tmp_path):
    files = save_clip(result, out_dir)
    assert read_sidecar(files.video)["provenance"]["signed"] is True
    assert moov_before_mdat(files.video)  # signing keeps the clip streamable
    tags = probe(files.video)["format"]["tags"]
    assert tags["comment"].startswith("AI-generated with Tiny Wan2.2") and tags["description"] == tags["comment"]
    check = provenance.verify_file(files.video)
    assert check.valid and not check.tampered and check.local_key
    assert check.declared["digital_source_type"] == TRAINED
    assert check.declared["model"] == "test-tiny"
    assert check.declared["generator"][0]["name"] == "Wan Studio"
    assert "prompt" not in check.declared  # only when the user opts in
    assert decode_video(files.video)[0].shape[0] == 9  # still a playable clip

    changed = provenance.verify_file(flip_media_byte(files.video, tmp_path / "changed.mp4"))
    assert changed.has_manifest and changed.tampered and not changed.valid
    assert "Changed after signing" in changed.summary()


def test_the_prompt_goes_in_only_when_asked(result, out_dir):
    files = save_clip(result, out_dir, ClipOptions(include_prompt=True))
    assert provenance.verify_file(files.video).declared["prompt"] == "a red cat on a roof"


def test_a_signing_failure_keeps_the_clip(result, out_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise provenance.SigningError("the key folder is not readable")

    monkeypatch.setattr(provenance, "sign_file", broken)
    files = save_clip(result, out_dir)
    assert files.video.is_file() and decode_video(files.video)[0].shape[0] == 9
    signing = read_sidecar(files.video)["provenance"]
    assert {k: signing[k] for k in ("signed", "signing_error")} == {
        "signed": False,
        "signing_error": "the key folder is not readable",
    }
    assert len(signing["watermark"]) == 8  # still marked
    assert not provenance.verify_file(files.video).has_manifest


def test_a_film_is_signed_with_its_clips_as_ingredients(result, out_dir):
    first = save_clip(result, out_dir).video
    second = save_clip(result, out_dir).video
    film = export_film(Storyboard(shots=[Shot(first.name), Shot(second.name)]), out_dir)
    check = provenance.verify_file(film)
    assert check.valid and check.declared["digital_source_type"].endswith("compositeWithTrainedAlgorithmicMedia")
    assert check.declared["ingredients"] == [first.name, second.name]
    assert probe(film)["format"]["tags"]["comment"].startswith("AI-generated")


def test_gif_films_are_signed_and_webm_ones_say_they_cannot_be(result, out_dir):
    from studio.verify import report

    clip = save_clip(result, out_dir).video
    gif = export_film(Storyboard(shots=[Shot(clip.name)], format="gif"), out_dir)
    assert provenance.verify_file(gif).valid
    webm = export_film(Storyboard(shots=[Shot(clip.name)], format="webm"), out_dir)
    assert decode_video(webm)[0].shape[0] == 9  # the film is kept, unsigned
    record = json.loads(Path(f"{webm}.json").read_text())["provenance"]
    assert record["signed"] is False and "cannot carry Content Credentials" in record["signing_error"]
    assert probe(webm)["format"]["tags"]["COMMENT"].startswith("AI-generated")  # the plain label still says it
    text, details = report(webm)
    assert not details["has_manifest"] and ".webm files cannot carry Content Credentials" in text


def test_verify_command(result, out_dir, tmp_path, capsys):
    signed = save_clip(result, out_dir).video
    plain = tmp_path / "plain.mp4"
    encode_mp4(np.zeros((5, 32, 32, 3), np.uint8), 8, plain)

    def verify(path: Path) -> subprocess.CompletedProcess:
        """`python app.py verify` as a user runs it for the first file; the same command in this process after
        (no interpreter start each time)."""
        if path == signed:
            return subprocess.run([sys.executable, "app.py", "verify", str(path)], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120)  # fmt: skip
        from studio.verify import main

        capsys.readouterr()
        code = main([str(path), "--output-dir", str(out_dir)])
        return subprocess.CompletedProcess([], code, capsys.readouterr().out, "")

    ok = verify(signed)
    assert ok.returncode == 0 and "Valid Content Credentials" in ok.stdout
    assert "trainedAlgorithmicMedia" in ok.stdout and "test-tiny" in ok.stdout
    none = verify(plain)
    assert none.returncode == 2
    assert none.stdout.startswith("No Content Credentials: this file carries no C2PA manifest.")
    changed = verify(flip_media_byte(signed, tmp_path / "changed.mp4"))
    assert changed.returncode == 1 and "Changed after signing" in changed.stdout
    appended = tmp_path / "appended.mp4"
    appended.write_bytes(signed.read_bytes() + b"\0" * 1024)
    grown = verify(appended)
    assert grown.returncode == 1 and "Changed after signing" in grown.stdout
    data = bytearray(signed.read_bytes())
    label = data.find(b"c2pa")
    for k in range(label + 100, label + 140):  # inside the manifest store
        data[k] ^= 0x55
    damaged_file = tmp_path / "damaged.mp4"
    damaged_file.write_bytes(bytes(data))
    damaged = verify(damaged_file)
    assert damaged.returncode == 1, damaged.stdout  # damaged is not "none" (exit 2)
    assert damaged.stdout.startswith(
        "Damaged Content Credentials: the file carries a C2PA manifest that cannot be read"
    )


def test_a_clip_signed_by_another_studio_is_not_called_ours(result, out_dir, tmp_path, monkeypatch):
    other_home = tmp_path / "another-studio"
    monkeypatch.setenv("WAN_STUDIO_HOME", str(other_home))
    theirs = save_clip(result, out_dir).video  # made on "another machine": its own key
    monkeypatch.undo()
    check = provenance.verify_file(theirs)
    assert check.valid and not check.local_key
    assert check.summary().startswith("Valid Content Credentials, signed by another key: Wan Studio signer ")
    assert (
        "not this studio's" in check.summary()
        and check.signer != provenance.verify_file(save_clip(result, out_dir).video).signer
    )


def landscape_pan(frames: int = 33) -> np.ndarray:
    """Natural-looking content: the example picture panning, as in docs/PERFORMANCE.md."""
    base = np.asarray(Image.open(ROOT / "assets" / "example-landscape.png").convert("RGB").resize((832, 480)))
    return np.stack([np.roll(base, 3 * t, axis=1) for t in range(frames)])


@pytest.mark.parametrize("crf, documented", [(18, 0.98), (23, 0.98), (28, 0.95)])
def test_watermark_reads_back_after_reencoding(tmp_path, crf, documented):
    payload = 0x5EED1234
    marked = watermark.embed(landscape_pan(), payload)
    psnr = 10 * np.log10(255**2 / ((marked.astype(float) - landscape_pan()) ** 2).mean())
    assert psnr >= 42  # the invisibility floor (docs/PERFORMANCE.md: 43-46 dB on this content, more on flat areas)
    clip = tmp_path / f"crf{crf}.mp4"
    encode_mp4(marked, 16, clip, crf=crf)
    frames, _ = decode_video(clip)
    reading = watermark.extract(frames)
    assert reading.payload == payload
    assert watermark.raw_bit_accuracy(frames, payload) >= documented - 0.02  # the documented figure
    assert watermark.extract(landscape_pan()).payload is None  # no false mark on unmarked video


def test_each_clip_carries_its_own_mark_bound_to_its_manifest(result, out_dir):
    first, second = save_clip(result, out_dir), save_clip(result, out_dir)  # the watermark is on by default
    marks = []
    for files in (first, second):  # the pixels are read back on clips of a real size: tests/test_soft_binding.py
        recorded = read_sidecar(files.video)["provenance"]["watermark"]
        assert provenance.verify_file(files.video).declared["watermark"] == recorded  # the soft binding
        marks.append(recorded)
    assert marks[0] != marks[1]  # same settings, same second: two clips, two marks
    unmarked = save_clip(result, out_dir, ClipOptions(watermark=False))
    assert "watermark" not in read_sidecar(unmarked.video)["provenance"]
    assert "watermark" not in provenance.verify_file(unmarked.video).declared


def test_the_signing_key_is_readable_by_its_owner_only(result, out_dir):
    import stat

    save_clip(result, out_dir)  # signing makes the identity on first use
    folder = provenance.keys_dir()
    key = folder / "signer-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_unmarked_clips_almost_never_read_as_marked():
    """A payload counts only past the sync threshold and when its CRC checks (library/watermark.py bounds the
    chance); 24 unmarked clips of several kinds (noise, gradients, flat colour, moving shapes; fixed seeds) read
    none here, 500 in the benchmark."""
    rng = np.random.default_rng(2026)
    found = 0
    for n in range(24):
        kind = n % 4
        if kind == 0:
            clip = rng.integers(0, 256, (4, 64, 96, 3), dtype=np.uint8)
        elif kind == 1:
            ramp = np.linspace(0, 255, 96, dtype=np.float32)[None, None, :, None] * rng.uniform(0.2, 1.0, 3)
            clip = np.broadcast_to(ramp, (4, 64, 96, 3)).astype(np.uint8)
        elif kind == 2:
            clip = np.full((4, 64, 96, 3), rng.integers(0, 256, 3), np.uint8)
        else:
            clip = np.zeros((4, 64, 96, 3), np.uint8)
            for f in range(4):
                x = int(rng.integers(0, 80))
                clip[f, 20:40, x : x + 16] = rng.integers(0, 256, 3)
        found += watermark.extract(clip).payload is not None
    assert found == 0


def break_the_key(problem: str) -> Path:
    """Damage this studio's signing identity (made first) the way `problem` says; the keys folder."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    provenance.identity()
    folder = provenance.keys_dir()
    if problem == "damaged key":
        (folder / "signer-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    elif problem == "damaged certificate":
        (folder / "signer-chain.pem").write_bytes(b"not a certificate")
    else:  # a valid key, but not the one the certificate was issued for
        other = ec.generate_private_key(ec.SECP256R1())
        pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        (folder / "signer-key.pem").write_bytes(other.private_bytes(*pem))
    return folder


@pytest.mark.parametrize(
    "problem, says",
    [("damaged key", "signing key is damaged"), ("damaged certificate", "certificate is damaged"),
     ("another key", "signing key does not belong to its certificate")],
)  # fmt: skip
def test_a_broken_signing_identity_is_named_and_the_file_kept_unsigned(tmp_path, monkeypatch, problem, says):
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    folder = break_the_key(problem)
    clip = tmp_path / "clip.mp4"
    encode_mp4(np.zeros((5, 32, 32, 3), np.uint8), 8, clip)
    with pytest.raises(provenance.SigningError) as info:
        provenance.sign_file(clip, tmp_path / "signed.mp4", provenance.manifest("clip.mp4", "test-tiny"))
    assert str(info.value) == (
        f"This studio's {says} (in {folder}). Move signer-key.pem and signer-chain.pem out of that folder and the "
        "studio makes a new key"
    )


def test_when_signing_fails_the_page_says_why(tmp_path, monkeypatch):
    import asyncio

    from studio.core import Studio
    from studio.page.handlers import generate, library, storyboard
    from studio.settings import Settings

    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    folder = break_the_key("damaged key")
    studio = Studio(Settings(model="test-tiny", output_dir=str(tmp_path / "outputs")), offline=True)
    why = f"Not signed: This studio's signing key is damaged (in {folder}). Move signer-key.pem and signer-chain.pem"

    async def collect(stream):
        return [update async for update in stream]

    form = ("a cat", "", "96x64", 5, 2, 5, 7, "[]", False)
    updates = asyncio.run(collect(generate.text_to_video_in_page(studio, *form)))
    status, clip = updates[-1][1], updates[-1][2]
    assert status.startswith("**Done** in") and why in status and status.endswith("makes a new key."), status
    assert decode_video(Path(clip))[0].shape[0] == 5 and not provenance.verify_file(Path(clip)).has_manifest
    details = library.show_clip(studio, Path(clip).name)[1]  # the clip's details in the Library say it too
    assert "Content Credentials: not signed (This studio&#x27;s signing key is damaged" in details, details

    base = storyboard.reload(studio)[-1]
    values = storyboard.values_of(studio, Storyboard(shots=[Shot(Path(clip).name)]))
    status, film = asyncio.run(collect(storyboard.export(studio, base, *values)))[-1][:2]
    assert status.startswith("**Done** — Film ready:") and why in status, status
    assert not provenance.verify_file(Path(film)).has_manifest
