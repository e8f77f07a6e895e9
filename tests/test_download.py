from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest

from imgclf import download
from imgclf.commands import download as download_work
from imgclf.common.cli import run_stage
from imgclf.data import datasets
from imgclf.data.datasets import DataError

from .conftest import FMNIST_DIR, runs_of, spec_for, write_idx_dataset


def run_download(out="data/raw"):
    return run_stage(download.main, ["--out", str(out),
                                     "--metrics", "reports/download_metrics.json"])


def test_mirror_files_are_verified_copied_and_logged(project, set_params, tiny_mirror, client):
    set_params(download__mirrors=[str(tiny_mirror)])

    assert run_download() == 0

    raw = project / "data" / "raw"
    names = sorted(f.name for f in datasets.DATASETS["fashion-mnist"].files)
    assert sorted(p.name for p in raw.glob("*.gz")) == names
    for name in names:
        assert (raw / name).read_bytes() == (tiny_mirror / name).read_bytes()
    assert not list(raw.glob(".*"))  # no temporary files left behind
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["dataset"] == "fashion-mnist"
    assert {f["source"] for f in manifest["files"]} == {str(tiny_mirror / n) for n in names}

    (run,) = runs_of(client, "download")
    assert run.info.status == "FINISHED"
    assert run.data.params["data.dataset"] == "fashion-mnist"
    for entry in manifest["files"]:
        name = entry["name"]
        assert run.data.params[f"source/{name}"] == str(tiny_mirror / name)
        assert run.data.params[f"md5/{name}"] == entry["md5"]
        assert run.data.params[f"size_bytes/{name}"] == str((raw / name).stat().st_size)
    assert run.data.metrics == {}  # sizes are facts, not scores to chart
    assert run.data.tags["stage"] == "download"
    assert run.data.tags["dataset"] == "fashion-mnist"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "manifest.json" in artifacts


def test_corrupt_first_mirror_falls_back_to_the_next(project, set_params, tiny_mirror, tmp_path):
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for path in tiny_mirror.glob("*.gz"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        (bad / path.name).write_bytes(bytes(data))
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")  # and one truncated file
    set_params(download__mirrors=[str(bad), str(tiny_mirror)])

    assert run_download() == 0

    manifest = json.loads((project / "data/raw/manifest.json").read_text())
    assert all(f["source"].startswith(str(tiny_mirror)) for f in manifest["files"])
    for path in tiny_mirror.glob("*.gz"):
        assert (project / "data/raw" / path.name).read_bytes() == path.read_bytes()


def test_no_source_lists_every_place_and_the_fix(project, set_params, tiny_mirror, tmp_path,
                                                 client, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    set_params(download__mirrors=[str(empty), str(tmp_path / "nowhere")])

    assert run_download() == 2

    err = capsys.readouterr().err
    assert "could not get fashion-mnist" in err
    assert f"{empty}/train-images-idx3-ubyte.gz: not found" in err
    assert f"{tmp_path}/nowhere/t10k-labels-idx1-ubyte.gz: not found" in err
    assert "apt-get install dataset-fashion-mnist" in err
    assert "download.mirrors" in err
    assert "Traceback" not in err
    assert not list((project / "data" / "raw").glob("*.gz"))
    (run,) = runs_of(client, "download")
    assert run.info.status == "FAILED"
    assert "could not get fashion-mnist" in run.data.tags["error"]


@pytest.fixture
def http_mirror(tmp_path):
    """A real HTTP server on a loopback port serving a folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_urls_are_tried_after_mirrors(tmp_path, http_mirror):
    folder, url = http_mirror
    files = write_idx_dataset(folder)
    spec = spec_for(datasets.DATASETS["fashion-mnist"], files,
                    urls=(url + "missing/", url))
    out = tmp_path / "raw"

    fetched = download_work.download(spec, [tmp_path / "no-mirror"], True, 10, out)

    assert [f.source for f in fetched] == [url + name for name in files]
    assert all((out / name).read_bytes() == data for name, data in files.items())


def test_offline_skips_urls(tmp_path, http_mirror):
    folder, url = http_mirror
    spec = spec_for(datasets.DATASETS["fashion-mnist"], write_idx_dataset(folder), urls=(url,))
    with pytest.raises(DataError) as caught:
        download_work.download(spec, [], False, 10, tmp_path / "raw")
    assert url not in str(caught.value)
    assert "download.online: true" in str(caught.value)


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_debian_package_is_the_default_mirror(project, set_params):
    set_params(download__mirrors=["/usr/share/datasets/{dataset}"])
    assert run_download() == 0
    manifest = json.loads((project / "data/raw/manifest.json").read_text())
    assert {f["check"] for f in manifest["files"]} <= {"md5", "payload-md5"}
    assert all(f["source"].startswith(str(FMNIST_DIR)) for f in manifest["files"])


def test_corrupt_file_already_in_the_output_is_replaced(project, set_params, tiny_mirror):
    set_params(download__mirrors=[str(tiny_mirror)])
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    name = "train-images-idx3-ubyte.gz"
    (raw / name).write_bytes(b"corrupt leftovers")

    assert run_download() == 0

    assert (raw / name).read_bytes() == (tiny_mirror / name).read_bytes()
    manifest = json.loads((raw / "manifest.json").read_text())
    assert next(f for f in manifest["files"] if f["name"] == name)["source"] == str(
        tiny_mirror / name)


def test_verified_file_already_in_the_output_is_kept(project, set_params, tiny_mirror):
    set_params(download__mirrors=[str(tiny_mirror)])
    assert run_download() == 0
    set_params(download__mirrors=[])  # no source at all: the verified copies suffice
    assert run_download() == 0


def test_another_datasets_files_are_rejected(project, set_params, tiny_mirror, tmp_path,
                                             capsys):
    impostor = tmp_path / "impostor"
    write_idx_dataset(impostor, seed=7)  # same names and format, other images
    set_params(download__mirrors=[str(impostor)])
    assert run_download() == 2
    assert "MD5 mismatch" in capsys.readouterr().err
    assert not list((project / "data/raw").glob("*.gz"))
