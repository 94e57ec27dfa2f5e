"""Content Credentials (C2PA): every clip and film is signed as AI-generated, fully offline.

On first use a local self-signed CA and a signing certificate are made and kept in the user's config
folder (keys/; the private key is readable by the user only and never leaves the machine). Manifests
say `c2pa.created` with digitalSourceType trainedAlgorithmicMedia (films: compositeWithTrained…, with
their clips as ingredients), the model id, and the app's name and version; the prompt only when the
user opts in.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import APP_NAME, __version__
from pipelines.paths import config_dir

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
MIME = {".mp4": "video/mp4", ".webm": "video/webm", ".gif": "image/gif", ".png": "image/png", ".jpg": "image/jpeg"}
# The C2PA SDK embeds manifests in these; for WebM it answers "type is unsupported".
SIGNABLE = (".mp4", ".gif", ".png", ".jpg")
_keys_lock = threading.Lock()
PARENT_LABEL = "c2pa.ingredient.parent"  # an edit's source, as its c2pa.opened action refers to it


class SigningError(RuntimeError):
    """Why a file could not be signed, in words a user can act on (the file is kept unsigned)."""


@dataclass(frozen=True)
class Identity:
    chain_pem: bytes  # signing certificate, then the local CA
    key_pem: bytes
    issuer: str


def keys_dir() -> Path:
    return config_dir() / "keys"


def identity() -> Identity:
    """This machine's signing identity, made on first use."""
    folder = keys_dir()
    chain, key = folder / "signer-chain.pem", folder / "signer-key.pem"
    with _keys_lock:
        if not (chain.is_file() and key.is_file()):
            _make_identity(folder)
        return Identity(chain.read_bytes(), key.read_bytes(), issuer=f"{APP_NAME} local CA")


def usable_identity() -> Identity:
    """This machine's identity, checked before signing: SigningError says in plain words what is wrong in the
    key folder and what to do (the C2PA library's own message names its internals, not the file)."""
    folder = keys_dir()
    try:
        me = identity()
    except OSError as err:
        reason = err.strerror or err
        raise SigningError(f"This studio's signing key in {folder} cannot be read or made: {reason}") from None
    problem = _identity_problem(me)
    if problem:
        raise SigningError(
            f"This studio's {problem} (in {folder}). Move signer-key.pem and signer-chain.pem out of that folder "
            "and the studio makes a new key"  # no full stop: the page adds one after it
        )
    return me


def _identity_problem(me: Identity) -> str | None:
    """What is wrong with a signing key and its certificate chain, in words; None when they are usable."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(me.key_pem, password=None)
    except (ValueError, TypeError):
        return "signing key is damaged"
    try:
        chain = x509.load_pem_x509_certificates(me.chain_pem)
    except ValueError:
        chain = []
    if len(chain) < 2:  # the signing certificate, then the local CA
        return "certificate is damaged"
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        return "signing key does not belong to its certificate"
    return None


WATERMARK_ALG = "com.wan-studio.watermark.2"  # the soft-binding algorithm's name in the manifest
SOFT_BINDING = "c2pa.soft-binding"


def bind_marks(claim: dict, payloads: list[int]) -> dict:
    """The claim with the watermarks its media carry but did not get from it (a film's shots' own marks, an
    upscaled copy's source's) as one soft-binding assertion, one block each."""
    blocks = [{"scope": {}, "value": base64.b64encode(p.to_bytes(4, "big")).decode()} for p in payloads]
    binding = {"alg": WATERMARK_ALG, "blocks": blocks, "pad": []}
    return dict(claim, assertions=[*claim.get("assertions", []), {"label": SOFT_BINDING, "data": binding}])


def bind_mark(claim: dict, payload: int | None = None) -> tuple[int, dict]:
    """A clip's watermark payload, derived from its manifest (its claim, a fresh nonce so two clips of the same
    second and settings differ) unless given, and the claim with the payload as a C2PA soft-binding assertion: a
    copy whose manifest was stripped still leads back to it (`Library.find_mark`)."""
    if payload is None:
        digest = hashlib.sha256(json.dumps(claim, sort_keys=True).encode() + secrets.token_bytes(16)).digest()
        payload = int.from_bytes(digest[:4], "big")
    value = base64.b64encode(payload.to_bytes(4, "big")).decode()
    binding = {"alg": WATERMARK_ALG, "blocks": [{"scope": {}, "value": value}], "pad": []}
    return payload, dict(claim, assertions=[*claim.get("assertions", []), {"label": SOFT_BINDING, "data": binding}])


def _make_identity(folder: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(days=1), not_valid_after=now + datetime.timedelta(days=3650))

    def usage(**on: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                 "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    def name(common: str) -> x509.Name:
        return x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, common), x509.NameAttribute(NameOID.ORGANIZATION_NAME, APP_NAME)]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"{APP_NAME} local CA")
    ca = (
        x509.CertificateBuilder(
            subject_name=ca_name,
            issuer_name=ca_name,
            public_key=ca_key.public_key(),
            serial_number=x509.random_serial_number(),
            **valid,
        )  # fmt: skip
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    fingerprint = hashlib.sha256(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )).hexdigest()[:8]  # fmt: skip
    cert = (
        x509.CertificateBuilder(
            subject_name=name(f"{APP_NAME} signer {fingerprint}"),  # tells one studio's clips from another's
            issuer_name=ca_name,
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            **valid,
        )  # fmt: skip
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "signer-chain.pem").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    key_path = folder / "signer-key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    # The CA's key is not needed again: a new identity is made if the files are deleted.


def manifest(
    title: str, model: str | None, prompt: str | None = None, composite: bool = False, loras: list | None = None
) -> dict:
    """The claim for a clip or film: AI-generated by `model` (with these LoRAs: file, SHA-256, strength, expert)."""
    parameters = {"model": model} if model else {}
    if prompt:
        parameters["prompt"] = prompt
    if loras:
        parameters["loras"] = [{k: lora[k] for k in ("file", "sha256", "strength", "experts")} for lora in loras]
    action = {
        "action": "c2pa.created",
        "digitalSourceType": COMPOSITE if composite else TRAINED,
        "softwareAgent": {"name": APP_NAME, "version": __version__},
    }
    if parameters:
        action["parameters"] = parameters
    return {
        "claim_generator_info": [{"name": APP_NAME, "version": __version__}],
        "title": title,
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [action]}}],
    }


def edit_manifest(title: str, source: str, action: str, model: dict, settings: dict) -> dict:
    """The claim for a clip made from another by a learned model (an upscale, a frame interpolation): the
    source opened as the parent ingredient, then `action` (c2pa.resized, c2pa.edited) by the model (name,
    file, SHA-256) with its settings. The source's own credentials travel inside the ingredient."""
    agent = {"name": APP_NAME, "version": __version__}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [
            {"action": "c2pa.opened", "softwareAgent": agent, "parameters": {"ingredientIds": [PARENT_LABEL]}},
            {"action": action, "digitalSourceType": TRAINED, "softwareAgent": agent,
             "parameters": {"model": model, **settings}},
        ]}}],
    }  # fmt: skip


def can_sign(path: Path) -> bool:
    return Path(path).suffix.lower() in SIGNABLE


def sign_file(
    source: Path, target: Path, claim: dict, ingredients: list[Path] = (), relationship: str = "componentOf"
) -> None:
    """Write a signed copy of `source` to `target` listing `ingredients` (a film's clips: componentOf; the
    clip an edit started from: parentOf); SigningError says why it could not."""
    try:
        import c2pa

        if not can_sign(source):
            raise SigningError(
                f"{source.suffix} files cannot carry Content Credentials (the C2PA SDK does not support the "
                f"format); MP4 and GIF exports are signed"
            )
        mime = MIME[source.suffix.lower()]
        me = usable_identity()
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", me.chain_pem, me.key_pem, None))
        builder = c2pa.Builder(claim)
        for ingredient in ingredients:
            with open(ingredient, "rb") as stream:
                described = {"title": ingredient.name, "relationship": relationship}
                if relationship == "parentOf":
                    described["label"] = PARENT_LABEL  # what the edit's c2pa.opened action names
                builder.add_ingredient(described, MIME[ingredient.suffix.lower()], stream)
        with open(source, "rb") as src, open(target, "w+b") as dst:
            builder.sign(signer, mime, src, dst)
    except SigningError:
        raise
    except Exception as err:  # the native library raises its own error types (private names); keep the reason
        raise SigningError(f"The C2PA library could not sign the file: {err}") from err


@dataclass
class Verification:
    has_manifest: bool
    valid: bool = False  # signature and content hashes check out
    tampered: bool = False  # the media changed after signing
    issuer: str | None = None
    local_key: bool = False  # signed by this machine's own key
    declared: dict = field(default_factory=dict)  # source type, model, app, prompt, ingredients
    problems: list[str] = field(default_factory=list)

    signer: str | None = None  # the signing certificate's common name
    damaged: bool = False  # a manifest is there but cannot be read

    def summary(self) -> str:
        if self.damaged:
            return "Damaged Content Credentials: the file carries a C2PA manifest that cannot be read."
        if not self.has_manifest:
            return "No Content Credentials: this file carries no C2PA manifest."
        if self.tampered:
            return "Changed after signing: the media no longer matches its signed manifest."
        if not self.valid:
            return "Invalid Content Credentials: " + "; ".join(self.problems)
        if self.local_key:
            return "Valid Content Credentials, signed by this studio's own key."
        who = " ".join(part for part in (self.signer, f"({self.issuer})" if self.issuer else None) if part)
        return (
            f"Valid Content Credentials, signed by another key: {who or 'an unnamed signer'}, not this studio's. "
            "Its certificate is self-issued, so who holds it cannot be confirmed."
        )


def verify_file(path: Path) -> Verification:
    import c2pa

    mime = MIME.get(Path(path).suffix.lower())
    try:
        with open(path, "rb") as stream:
            reader = c2pa.Reader(mime, stream) if mime else c2pa.Reader(str(path), stream)
            report = json.loads(reader.json())
            state = reader.get_validation_state()
    except Exception as err:
        if _carries_manifest(Path(path)):  # the manifest is there, but unreadable
            return Verification(has_manifest=True, damaged=True, problems=[f"the manifest cannot be read ({err})"])
        if "ManifestNotFound" in type(err).__name__ or "no JUMBF" in str(err):
            return Verification(has_manifest=False)
        return Verification(has_manifest=False, problems=[f"{type(err).__name__}: {err}"])
    statuses = report.get("validation_status") or []
    codes = [s.get("code", "") for s in statuses]
    failures = [s for s in statuses if s.get("code") != "signingCredential.untrusted"]
    active = report.get("manifests", {}).get(report.get("active_manifest"), {})
    signature = active.get("signature_info", {})
    declared = _declared(active)
    return Verification(
        has_manifest=True,
        valid=state in ("Valid", "Trusted") and not failures,
        tampered=any("mismatch" in code for code in codes),
        issuer=signature.get("issuer"),
        signer=signature.get("common_name"),
        local_key=_is_local(signature),
        declared=declared,
        problems=[f"{s.get('code')}: {s.get('explanation')}" for s in failures],
    )


def _carries_manifest(path: Path, chunk: int = 1 << 20) -> bool:
    """Whether the bytes hold a C2PA manifest store: a JUMBF box ('jumb') labelled 'c2pa' right after it."""
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            data = tail + block
            start = 0
            while (at := data.find(b"jumb", start)) >= 0:
                if b"c2pa" in data[at : at + 64]:
                    return True
                start = at + 1
            tail = data[-64:]
    return False


def _is_local(signature: dict) -> bool:
    """Signed by a certificate issued by this machine's CA (same issuer name and our serial on disk)."""
    serial = signature.get("cert_serial_number")
    chain = keys_dir() / "signer-chain.pem"
    if not serial or not chain.is_file():
        return False
    from cryptography import x509

    ours = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    return str(ours.serial_number) == str(serial)


def _declared(active: dict) -> dict:
    out: dict = {"title": active.get("title"), "generator": active.get("claim_generator_info")}
    for assertion in active.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                if action.get("action") == "c2pa.created":
                    out["action"] = "c2pa.created"
                    out["digital_source_type"] = action.get("digitalSourceType")
                    out.update(action.get("parameters", {}))
                elif action.get("action") not in (None, "c2pa.opened"):  # an edit: upscaled, interpolated
                    out.setdefault("edits", []).append({"action": action["action"], **action.get("parameters", {})})
                    out["digital_source_type"] = action.get("digitalSourceType")
        if assertion.get("label") == SOFT_BINDING and assertion.get("data", {}).get("alg") == WATERMARK_ALG:
            marks = []
            for block in assertion["data"].get("blocks") or []:
                try:
                    marks.append(base64.b64decode(block.get("value", "")).hex())
                except ValueError:
                    pass
            if marks:
                out["watermark"], out["watermarks"] = marks[0], marks
    ingredients = active.get("ingredients", [])
    out["ingredients"] = [i.get("title") for i in ingredients]
    out["parents"] = [i.get("title") for i in ingredients if i.get("relationship") == "parentOf"]
    return out
