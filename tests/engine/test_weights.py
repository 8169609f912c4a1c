"""Weights registry and downloader against a real local HTTP server (the network edge)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.models import digests
from engine.models.digests import DigestRecords, reference_digest, sidecar_path, write_sidecar
from engine.models.download import download
from engine.models.fetch import fetch_file
from engine.models.registry import REGISTRY, WeightFile, WeightsEntry, get_entry
from engine.models.verify import file_statuses
from spooky import cli
from spooky.errors import DownloadError, WeightsError

PAYLOAD = os.urandom(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file.bin, honouring Range unless the server is told to ignore it."""

    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/page.bin":
            body = b"<html>please confirm</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/page-as-file.bin":  # a login page sent as a download
            body = b"\n<!DOCTYPE html><html><body>Sign in to continue</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path != "/file.bin":
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not self.server.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    requests: list[tuple[str, str | None]]
    ignore_range: bool


@pytest.fixture
def server() -> Iterator[SimpleNamespace]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    httpd.ignore_range = False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield SimpleNamespace(base=base, httpd=httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_with_checksum(server, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "w.bin"
    digest = download(f"{server.base}/file.bin", dest, sha256=DIGEST, progress=False)
    assert digest == DIGEST
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "w.bin.part").exists()
    assert server.httpd.requests == [("/file.bin", None)]


def test_resume_from_partial_file(server, tmp_path: Path) -> None:
    url = f"{server.base}/file.bin"
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD[:123_456])
    (tmp_path / "w.bin.part.url").write_text(url, encoding="utf-8")
    assert download(url, dest, sha256=DIGEST, progress=False) == DIGEST
    assert server.httpd.requests == [("/file.bin", "bytes=123456-")]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_starts_over(server, tmp_path: Path) -> None:
    server.httpd.ignore_range = True
    url = f"{server.base}/file.bin"
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: would corrupt if appended
    (tmp_path / "w.bin.part.url").write_text(url, encoding="utf-8")
    assert download(url, dest, sha256=DIGEST, progress=False) == DIGEST
    assert dest.read_bytes() == PAYLOAD


def test_range_not_satisfiable_starts_over(server, tmp_path: Path) -> None:
    url = f"{server.base}/file.bin"
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD + b"extra")  # longer than the file: HTTP 416
    (tmp_path / "w.bin.part.url").write_text(url, encoding="utf-8")
    assert download(url, dest, sha256=DIGEST, progress=True) == DIGEST
    assert server.httpd.requests == [("/file.bin", f"bytes={len(PAYLOAD) + 5}-"), ("/file.bin", None)]
    assert dest.read_bytes() == PAYLOAD


def test_part_from_another_mirror_is_not_resumed(server, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"y" * 1000)
    (tmp_path / "w.bin.part.url").write_text("http://elsewhere/file.bin", encoding="utf-8")
    download(f"{server.base}/file.bin", dest, sha256=DIGEST, progress=False)
    assert server.httpd.requests == [("/file.bin", None)]
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_download(server, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download(f"{server.base}/file.bin", dest, sha256="0" * 64, progress=False)
    assert DIGEST in str(info.value)
    assert not dest.exists() and not (tmp_path / "w.bin.part").exists()


def test_http_404_names_the_url(server, tmp_path: Path) -> None:
    url = f"{server.base}/missing.bin"
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(url, tmp_path / "w.bin", progress=False)
    assert url in str(info.value)
    assert not (tmp_path / "w.bin").exists()


def test_web_page_instead_of_file(server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"web page instead of w\.bin"):
        download(f"{server.base}/page.bin", tmp_path / "w.bin", progress=False)


def test_unreachable_server(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="could not reach"):
        download("http://127.0.0.1:9/file.bin", tmp_path / "w.bin", progress=False, timeout=5)


def test_not_enough_disk_space(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: real._replace(free=1000))
    with pytest.raises(DownloadError, match="not enough disk space") as info:
        download(f"{server.base}/file.bin", tmp_path / "w.bin", progress=False)
    assert "293.0 KiB" in str(info.value)  # what the file needs
    assert not (tmp_path / "w.bin").exists()


def test_fetch_records_a_sidecar_then_verifies_against_it(server, tmp_path: Path) -> None:
    wf = WeightFile("x/w.bin", urls=(f"{server.base}/missing.bin", f"{server.base}/file.bin"))
    path = fetch_file(wf, tmp_path, progress=False)  # first mirror 404s, second works
    assert path.read_bytes() == PAYLOAD
    assert sidecar_path(path).read_text(encoding="utf-8").split()[0] == DIGEST
    assert reference_digest(wf, path) == DIGEST
    n = len(server.httpd.requests)
    assert fetch_file(wf, tmp_path, progress=False) == path  # present and matching: no download
    assert len(server.httpd.requests) == n
    path.write_bytes(b"tampered")
    fetch_file(wf, tmp_path, progress=False)  # fails its checksum: fetched again
    assert path.read_bytes() == PAYLOAD


def test_fetch_records_the_digest_so_nothing_hashes_the_file_again(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = WeightFile("w.bin", urls=(f"{server.base}/file.bin",))
    path = fetch_file(wf, tmp_path, progress=False)
    monkeypatch.setattr(digests, "sha256_file", lambda p: pytest.fail(f"{p} was hashed again"))
    assert DigestRecords.in_cache(tmp_path).digest(path) == DIGEST  # what the engine does at load
    n = len(server.httpd.requests)
    assert fetch_file(wf, tmp_path, progress=False) == path  # present and matching its sidecar
    assert len(server.httpd.requests) == n


def test_fetch_reports_every_failed_mirror(server, tmp_path: Path) -> None:
    wf = WeightFile("w.bin", urls=(f"{server.base}/a.bin", f"{server.base}/b.bin"))
    with pytest.raises(DownloadError, match="all 2 mirror") as info:
        fetch_file(wf, tmp_path, progress=False)
    assert "/a.bin" in str(info.value) and "/b.bin" in str(info.value)


def test_registry_entries() -> None:
    assert set(REGISTRY) == {
        "stylegan2_ffhq",
        "vqgan_wikiart_16384",
        "vqgan_imagenet_16384",
        "clip_vit_b_32",
        "clip_vit_b_32_openai",
    }
    for entry in REGISTRY.values():
        for wf in entry.files:
            assert wf.urls and all(u.startswith(("http://", "https://")) for u in wf.urls)
            assert wf.sha256 is None or len(wf.sha256) == 64
    assert [f.filename for f in REGISTRY["vqgan_wikiart_16384"].files] == [
        "vqgan_wikiart_16384/model.yaml",
        "vqgan_wikiart_16384/last.ckpt",
    ]
    with pytest.raises(WeightsError, match="known names: stylegan2_ffhq"):
        get_entry("biggan")


def test_verify_statuses(tmp_path: Path) -> None:
    ckpt = tmp_path / "vqgan_imagenet_16384" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(PAYLOAD)
    (tmp_path / "vqgan_imagenet_16384" / "model.yaml").write_text("model: {}\n", encoding="utf-8")
    write_sidecar(ckpt, "f" * 64)
    checks = {st.path.name: st.check for st in file_statuses(["vqgan_imagenet_16384"], tmp_path, check=True)}
    assert checks == {"model.yaml": "unverified", "last.ckpt": "mismatch"}
    write_sidecar(ckpt, DIGEST)
    checks = {st.path.name: st.check for st in file_statuses(["vqgan_imagenet_16384"], tmp_path, check=True)}
    assert checks["last.ckpt"] == "ok"


def test_cli_list_shows_presence_and_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "clip-vit-b-32-openai.pt").write_bytes(b"\0" * 2048)
    assert cli.main(["weights", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"cache directory: {tmp_path}" in out
    rows = out.split("\n\nCLIP ViT-B/32 files found")[0].splitlines()[2:]
    lines = {row.split()[0] + ":" + row.split()[-1].rsplit("/", 1)[-1]: row for row in rows}
    clip_line = lines["clip_vit_b_32:clip-vit-b-32-openai.pt"]
    assert " yes " in clip_line and "2.0 KiB" in clip_line
    ckpt_line = lines["vqgan_imagenet_16384:last.ckpt"]
    assert " no " in ckpt_line and "~934.6 MiB" in ckpt_line
    assert str(tmp_path / "vqgan_wikiart_16384" / "model.yaml") in out


def test_cli_reads_cache_dir_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ncache_dir = "{cache}"\n', encoding="utf-8")
    assert cli.main(["weights", "list", "--config", str(config)]) == 0
    assert f"cache directory: {cache}" in capsys.readouterr().out


def test_cli_list_shows_files_the_config_points_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    have = tmp_path / "elsewhere" / "stylegan2-ffhq-config-f.pt"
    have.parent.mkdir()
    have.write_bytes(b"\0" * 4096)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[models]\ncache_dir = "{tmp_path / "cache"}"\nstylegan2 = "{have}"\n'
        f'clip = "{tmp_path / "nowhere.bin"}"\n',
        encoding="utf-8",
    )
    assert cli.main(["weights", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out.split("files named in the [models] section")[1]
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert " yes " in rows["models.stylegan2"] and "4.0 KiB" in rows["models.stylegan2"]
    assert " no " in rows["models.clip"] and str(tmp_path / "nowhere.bin") in rows["models.clip"]
    assert "models.vqgan_ckpt" not in rows


def test_cli_verify_and_unknown_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "clip-vit-b-32-openai.pt"
    path.write_bytes(PAYLOAD)
    write_sidecar(path, DIGEST)
    assert cli.main(["weights", "verify", "clip_vit_b_32", "--cache-dir", str(tmp_path)]) == 0
    assert "ok" in capsys.readouterr().out
    path.write_bytes(b"changed")
    assert cli.main(["weights", "verify", "clip_vit_b_32", "--cache-dir", str(tmp_path)]) == 1
    assert "mismatch" in capsys.readouterr().out
    assert cli.main(["weights", "fetch", "biggan", "--cache-dir", str(tmp_path)]) == 1
    assert "unknown weights name 'biggan'" in capsys.readouterr().err


def test_cli_fetch_downloads_and_records_digest(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = WeightsEntry(
        name="toy_weights",
        kind="clip",
        description="a toy file served locally",
        files=(WeightFile("toy/w.bin", urls=(f"{server.base}/file.bin",)),),
    )
    monkeypatch.setitem(REGISTRY, "toy_weights", entry)
    args = ["weights", "fetch", "toy_weights", "--cache-dir", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    path = tmp_path / "toy" / "w.bin"
    assert path.read_bytes() == PAYLOAD
    assert str(path) in capsys.readouterr().out
    assert cli.main(["weights", "verify", "toy_weights", "--cache-dir", str(tmp_path)]) == 0
    assert f"sha256 {DIGEST}" in capsys.readouterr().out


def test_web_page_sent_as_a_file_is_refused(server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="starts like HTML"):
        download(f"{server.base}/page-as-file.bin", tmp_path / "w.bin", progress=False)
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.part").exists()


def test_file_far_smaller_than_published_is_refused(server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"sends 293\.0 KiB for w\.bin, which is about 9\.5 MiB"):
        download(f"{server.base}/file.bin", tmp_path / "w.bin", progress=False, expected_size=10_000_000)
    assert not (tmp_path / "w.bin").exists()


def _vqgan_entry(urls: tuple[str, ...], sha256: str | None = None) -> WeightsEntry:
    return WeightsEntry(
        name="toy_vqgan",
        kind="vqgan",
        description="a toy VQGAN served locally",
        files=(
            WeightFile("toy/model.yaml", urls=urls),
            WeightFile("toy/last.ckpt", urls=urls, sha256=sha256, approx_size=250_000),
        ),
    )


def test_fetch_tries_every_mirror_in_order(server, tmp_path: Path) -> None:
    urls = tuple(f"{server.base}/{p}" for p in ("page.bin", "page-as-file.bin", "missing.bin", "file.bin"))
    entry = _vqgan_entry(urls, DIGEST)
    path = fetch_file(entry.files[1], tmp_path, progress=False, entry=entry)
    assert path.read_bytes() == PAYLOAD
    assert [p for p, _ in server.httpd.requests] == [
        "/page.bin",
        "/page-as-file.bin",
        "/missing.bin",
        "/file.bin",
    ]


def test_fetch_that_fails_everywhere_says_what_was_tried_and_what_to_do(server, tmp_path: Path) -> None:
    urls = tuple(f"{server.base}/{p}" for p in ("page.bin", "page-as-file.bin", "missing.bin", "file.bin"))
    entry = _vqgan_entry(urls, DIGEST)
    entry = WeightsEntry(  # the file is far smaller than published: refused too
        entry.name,
        entry.kind,
        entry.description,
        (entry.files[0], replace(entry.files[1], approx_size=10**7)),
    )
    with pytest.raises(DownloadError) as info:
        fetch_file(entry.files[1], tmp_path, progress=False, entry=entry)
    message = str(info.value)
    assert "could not download last.ckpt: all 4 mirror(s) failed" in message
    for i, url in enumerate(urls, 1):
        assert f"\n  {i}. " in message and url in message
    assert "web page" in message and "starts like HTML" in message and "HTTP 404" in message
    assert "which is about 9.5 MiB: not the model file" in message
    assert "`vqgan_config` and `vqgan_ckpt` in the [models] section" in message
    assert message.endswith(
        "`spooky weights verify toy_vqgan --file PATH` checks it against the published digest"
    )
    assert "\ndownload it by hand" in message


def test_cli_verify_checks_a_hand_downloaded_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(REGISTRY, "toy_vqgan", _vqgan_entry(("https://example.invalid/x",), DIGEST))
    mine = tmp_path / "Downloads" / "wikiart_16384.ckpt"
    mine.parent.mkdir()
    mine.write_bytes(PAYLOAD)
    args = ["weights", "verify", "toy_vqgan", "--file", str(mine), "--cache-dir", str(tmp_path)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert " ok " in out and f"sha256 {DIGEST}" in out
    mine.write_bytes(PAYLOAD[:-1] + b"x")
    assert cli.main(args) == 1
    assert "mismatch" in capsys.readouterr().out
    # a file named in [models] is checked against the digest of the entry models.vqgan names
    mine.write_bytes(PAYLOAD)
    config = tmp_path / "config.toml"
    yaml_file = tmp_path / "Downloads" / "wikiart_16384.yaml"
    yaml_file.write_text("model: {}\n", encoding="utf-8")
    config.write_text(
        f'[models]\ncache_dir = "{tmp_path / "cache"}"\nvqgan = "toy_vqgan"\n'
        f'vqgan_config = "{yaml_file}"\nvqgan_ckpt = "{mine}"\n',
        encoding="utf-8",
    )
    assert cli.main(["weights", "verify", "--config", str(config)]) == 0
    rows = {
        line.split()[0] + " " + line.split()[2]: line for line in capsys.readouterr().out.splitlines()[1:]
    }
    assert " ok " in rows[f"models.vqgan_ckpt {mine}"]
    assert " unverified " in rows[f"models.vqgan_config {yaml_file}"]


def test_registry_prefers_https_and_records_sizes() -> None:
    for entry in REGISTRY.values():
        for wf in entry.files:
            assert wf.urls[0].startswith("https://"), wf.urls
            schemes = [u.split(":")[0] for u in wf.urls]
            assert schemes == sorted(schemes, key=lambda s: s != "https")  # every https before any http
            if wf.filename.endswith((".ckpt", ".pt", ".bin")) and entry.kind != "stylegan2":
                assert wf.approx_size and wf.approx_size > 100_000_000
