"""The opt-in downloader, against a loopback HTTP server serving fixtures (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from dataclasses import replace

import pytest

from medret import download as dl
from medret.__main__ import main
from medret.errors import MedretError

PAYLOAD = b"fake checkpoint bytes " * 1000


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 at a free port; yield the base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep pytest output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _publish(root, path, data):
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def test_download_checks_the_digest(server, tmp_path, monkeypatch):
    root, base = server
    spec = replace(dl.PUBLIC_FILES["clip-vit-b-32-openai"], sha256=hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(dl.PUBLIC_FILES, spec.name, spec)
    _publish(root, "/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt", PAYLOAD)
    out = dl.download(spec.name, tmp_path / "w", mirror=base)
    assert out == tmp_path / "w" / "ViT-B-32.pt" and out.read_bytes() == PAYLOAD


def test_digest_mismatch_leaves_nothing(server, tmp_path):
    root, base = server
    # The real published sha256 cannot match our fixture bytes: the download must be refused.
    _publish(root, "/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt", PAYLOAD)
    with pytest.raises(MedretError, match=r"sha256 .* != published 40d36571"):
        dl.download("clip-vit-b-32-openai", tmp_path / "w", mirror=base)
    assert not list((tmp_path / "w").iterdir())


def test_zip_member_is_extracted(server, tmp_path):
    root, base = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("medclip-vit-pretrained/pytorch_model.bin", PAYLOAD)
        zf.writestr("medclip-vit-pretrained/config.json", b"{}")
    _publish(root, "/pytrial/medclip-vit-pretrained.zip", buf.getvalue())
    out = main(["download", "medclip-vit", "--dest", str(tmp_path / "w"), "--mirror", base])
    assert out == 0
    assert (tmp_path / "w" / "medclip-vit-pytorch_model.bin").read_bytes() == PAYLOAD


def test_default_destination_and_biovil_text_model(server, tmp_path, monkeypatch):
    # Without --dest, files land in weights/ (where config/examples look), here the BioViL text model
    # directory, fetched from its pinned revision.
    root, base = server
    files = {"config.json": b'{"model_type": "cxr-bert"}', "pytorch_model.bin": PAYLOAD, "vocab.txt": b"[PAD]\n"}
    for fname, data in files.items():
        _publish(root, f"/microsoft/BiomedVLP-CXR-BERT-specialized/resolve/v1.1/{fname}", data)
    monkeypatch.chdir(tmp_path)
    names = ["biovil-text-config", "biovil-text-pytorch-model", "biovil-text-vocab"]
    assert main(["download", *names, "--mirror", base]) == 0
    for fname, data in files.items():
        assert (tmp_path / "weights" / "BiomedVLP-CXR-BERT-specialized" / fname).read_bytes() == data
    assert {p.name for p in tmp_path.iterdir()} == {"www", "weights"}, "nothing written anywhere else"
    assert dl.PUBLIC_FILES["biovil-t-text-vocab"].url == (
        "https://huggingface.co/microsoft/BiomedVLP-BioViL-T/resolve/v1.0/vocab.txt"
    )
    assert dl.PUBLIC_FILES["biovil-t-text-pytorch-model"].filename == "BiomedVLP-BioViL-T/pytorch_model.bin"


def test_missing_file_and_manual_files(server, tmp_path, capsys):
    _, base = server
    with pytest.raises(MedretError, match="download failed"):
        dl.download("cxr-clip-r50-m", tmp_path / "w", mirror=base)  # 404 on the mirror
    assert not (tmp_path / "w" / "r50_m.tar").exists()
    with pytest.raises(MedretError, match=r"cannot be fetched automatically.*Box.*models\.<name>\.checkpoint"):
        dl.download("cxr-repair", tmp_path / "w")
    assert main(["download", "nope", "--dest", str(tmp_path)]) == 1
    assert "unknown file 'nope'" in capsys.readouterr().err


def test_listing_commands(capsys):
    assert main(["files"]) == 0 and "cxr-clip-swint-mcc" in capsys.readouterr().out
    assert main(["families"]) == 0 and "local:" in capsys.readouterr().out
