"""Downloads against a real HTTP server on 127.0.0.1: mirrors, retries, resume, MD5, safe extraction."""

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from data_helpers import make_voc_root

from frcnn.config import config_from_dict
from frcnn.data import download as download_mod
from frcnn.data.archive import UnsafeArchiveError, check_archive, find_voc_roots, safe_extract
from frcnn.data.download import _url_filename, mirror_urls
from frcnn.data.fetch import DownloadError, fetch, meta_path
from frcnn.errors import DataError
from frcnn.pipeline import download

FAST = {"retries": 2, "backoff": 0.001, "timeout": 5.0, "progress": False}
PAYLOAD = bytes(range(256)) * 2000  # 512 kB: several read chunks


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz", links: dict[str, str] | None = None,
              ) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def voc_tree_bytes(tmp_path: Path, prefix: str, splits: dict[str, list[str]], fmt: str = "tar.gz"
                   ) -> bytes:
    """A small VOC-layout archive: 5 images under `prefix` with the given ImageSets lists."""
    src = tmp_path / "src"
    items = {f"im{i}": (40, 30, [("cat" if i % 2 else "dog", (2, 3, 20, 25), 0)]) for i in range(5)}
    make_voc_root(src / prefix, items, splits)
    files = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    if fmt == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return buf.getvalue()
    return tar_bytes(files, mode="w" if fmt == "tar" else "w:gz")


def url_config(url: str, checksum: str | None = None, mirrors: tuple[str, ...] = ()):
    return config_from_dict({}, {"data.dataset": "url", "data.url": url, "data.md5": checksum,
                                 "data.mirrors": list(mirrors)})


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".part" in p.name)


# ---------------------------------------------------------------- fetch


def test_fetch_success(tmp_path, file_server):
    url = file_server.serve("/a.bin", PAYLOAD)
    dest = fetch([url], tmp_path / "a.bin", md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == []


def test_fetch_falls_back_to_mirrors_after_refused_and_500(tmp_path, file_server, refused_url):
    bad = file_server.serve("/500/a.bin", mode="500")
    good = file_server.serve("/ok/a.bin", PAYLOAD)
    dest = fetch([refused_url, bad, good], tmp_path / "a.bin", md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert file_server.routes["/500/a.bin"].hits == 2  # retried, then the next mirror
    assert file_server.routes["/ok/a.bin"].hits == 1


def test_fetch_resumes_after_a_cut_connection(tmp_path, file_server):
    url = file_server.serve("/cut.bin", PAYLOAD, mode="cut")
    dest = fetch([url], tmp_path / "cut.bin", md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    route = file_server.routes["/cut.bin"]
    assert route.hits == 2
    assert route.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]  # asked only for the rest
    assert leftovers(tmp_path) == []


def test_fetch_resumes_a_partial_file_from_an_earlier_run(tmp_path, file_server):
    url = file_server.serve("/p.bin", PAYLOAD)
    (tmp_path / "p.bin.part").write_bytes(PAYLOAD[:1000])
    fetch([url], tmp_path / "p.bin", md5(PAYLOAD), **FAST)
    assert file_server.routes["/p.bin"].ranges == ["bytes=1000-"]
    assert (tmp_path / "p.bin").read_bytes() == PAYLOAD


def test_fetch_complete_partial_file_is_not_downloaded_again(tmp_path, file_server):
    url = file_server.serve("/p.bin", PAYLOAD)
    (tmp_path / "p.bin.part").write_bytes(PAYLOAD)  # a run died between download and rename
    fetch([url], tmp_path / "p.bin", md5(PAYLOAD), **FAST)
    assert file_server.routes["/p.bin"].ranges == [f"bytes={len(PAYLOAD)}-"]  # answered 416
    assert (tmp_path / "p.bin").read_bytes() == PAYLOAD and leftovers(tmp_path) == []


def test_fetch_md5_mismatch_is_an_error_and_leaves_no_file(tmp_path, file_server):
    url = file_server.serve("/a.bin", PAYLOAD)
    with pytest.raises(DownloadError, match=f"MD5 mismatch: expected {'0' * 32}, got {md5(PAYLOAD)}"):
        fetch([url], tmp_path / "a.bin", "0" * 32, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_fetch_all_mirrors_failing_lists_each(tmp_path, file_server, refused_url):
    missing = file_server.serve("/gone.bin", mode="404")
    with pytest.raises(DownloadError) as info:
        fetch([refused_url, missing], tmp_path / "x.bin", None, **FAST)
    msg = str(info.value)
    assert "x.bin: download failed from every URL" in msg
    assert refused_url in msg and "HTTP 404" in msg
    assert file_server.routes["/gone.bin"].hits == 1  # a 404 is not retried


def test_fetch_keeps_a_verified_file_without_network(tmp_path, file_server):
    url = file_server.serve("/a.bin", PAYLOAD)
    (tmp_path / "a.bin").write_bytes(PAYLOAD)
    fetch([url], tmp_path / "a.bin", md5(PAYLOAD), **FAST)
    assert file_server.routes["/a.bin"].hits == 0
    (tmp_path / "a.bin").write_bytes(b"corrupt")  # a bad copy is replaced, never used
    fetch([url], tmp_path / "a.bin", md5(PAYLOAD), **FAST)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


# ---------------------------------------------------------------- safe extraction


@pytest.mark.parametrize("files, links, message", [
    ({"../evil.txt": b"x"}, None, "member '../evil.txt' escapes the target folder"),
    ({"data/../../evil.txt": b"x"}, None, "escapes the target folder"),
    ({"/tmp/evil.txt": b"x"}, None, "member '/tmp/evil.txt' escapes"),
    ({"ok.txt": b"x"}, {"data/link": "../../etc"}, "link 'data/link' -> '../../etc' points outside"),
    ({"ok.txt": b"x"}, {"abs": "/etc/passwd"}, "points outside"),
])
def test_unsafe_tar_is_refused_before_writing_anything(tmp_path, files, links, message):
    archive = tmp_path / "bad.tar"
    archive.write_bytes(tar_bytes(files, mode="w", links=links))
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, target)
    assert list(target.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_unsafe_zip_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "x")
        zf.writestr("../evil.txt", "x")
    with pytest.raises(UnsafeArchiveError, match="bad.zip: member '../evil.txt' escapes"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_not_an_archive(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"hello")
    with pytest.raises(Exception, match="x.tar: not a .tar, .tar.gz or .zip archive"):
        safe_extract(tmp_path / "x.tar", tmp_path / "out")


def test_internal_links_and_voc_roots(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes({"d/VOC/Annotations/a.xml": b"<annotation/>",
                                   "d/VOC/JPEGImages/a.jpg": b"x", "d/Other/Annotations/b.xml": b""},
                                  mode="w", links={"d/VOC/alias": "Annotations"}))
    safe_extract(archive, tmp_path / "out")
    assert find_voc_roots(tmp_path / "out") == ["d/VOC"]


# ---------------------------------------------------------------- the stage


def test_download_url_end_to_end_then_reuse(tmp_path, file_server, capsys):
    data = voc_tree_bytes(tmp_path, "MyData/VOCdevkit/MINE",
                          {"trainval": ["im0", "im1", "im2"], "test": ["im3", "im4"]})
    url = file_server.serve("/datasets/mine.tar.gz", data)
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    cfg = url_config(url, md5(data))
    manifest = download.run(cfg, raw_dir=raw, cache_dir=cache, **FAST)
    assert manifest["roots"] == ["MyData/VOCdevkit/MINE"]
    assert manifest["splits"]["test"] == [{"root": "MyData/VOCdevkit/MINE",
                                           "ids": "MyData/VOCdevkit/MINE/ImageSets/Main/test.txt"}]
    assert manifest["class_order"] == "discover"
    assert json.loads((raw / "manifest.json").read_text()) == manifest
    assert (raw / "MyData/VOCdevkit/MINE/JPEGImages/im0.jpg").is_file()
    assert leftovers(tmp_path) == [] and leftovers(cache) == []
    # a successful download says what it wrote
    summary = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith(f"download: url -> {raw}:")]
    assert summary and "files" in summary[0] and "splits trainval (1 list), test (1 list)" in summary[0]

    download.run(cfg, raw_dir=raw, cache_dir=cache, **FAST)  # present and verified: no request at all
    assert file_server.routes["/datasets/mine.tar.gz"].hits == 1
    for p in raw.rglob("*.jpg"):
        p.unlink()
    (raw / "MyData/VOCdevkit/MINE/JPEGImages").rmdir()
    download.run(cfg, raw_dir=raw, cache_dir=cache, **FAST)  # data gone but the archive is cached: re-extracted
    assert file_server.routes["/datasets/mine.tar.gz"].hits == 1
    assert (raw / "MyData/VOCdevkit/MINE/JPEGImages/im0.jpg").is_file()


def test_download_url_uses_mirrors_after_the_url_fails(tmp_path, file_server):
    data = voc_tree_bytes(tmp_path, "VOC", {"trainval": ["im0"], "test": ["im1"]})
    url = file_server.serve("/primary/d.tar.gz", mode="500")
    file_server.serve("/mirror/d.tar.gz", data)
    manifest = download.run(url_config(url, md5(data), (file_server.url("/mirror/"),)), raw_dir=tmp_path / "raw", cache_dir=tmp_path / "cache", **FAST)
    assert manifest["roots"] == ["VOC"]


def test_download_url_md5_mismatch_leaves_nothing(tmp_path, file_server):
    data = voc_tree_bytes(tmp_path, "VOC", {"trainval": ["im0"], "test": ["im1"]})
    url = file_server.serve("/d.tar.gz", data)
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download.run(url_config(url, "f" * 32), raw_dir=tmp_path / "raw", cache_dir=tmp_path / "cache", **FAST)
    assert not (tmp_path / "raw").exists()
    assert list((tmp_path / "cache").iterdir()) == []
    assert leftovers(tmp_path) == []


def test_download_traversal_attempt_is_refused(tmp_path, file_server):
    data = tar_bytes({"VOC/Annotations/a.xml": b"", "VOC/JPEGImages/a.jpg": b"",
                      "../../escaped.txt": b"gotcha"})
    url = file_server.serve("/evil.tar.gz", data)
    with pytest.raises(UnsafeArchiveError, match="escapes the target folder; archive refused"):
        download.run(url_config(url), raw_dir=tmp_path / "raw", cache_dir=tmp_path / "cache", **FAST)
    assert not (tmp_path / "raw").exists() and leftovers(tmp_path) == []
    assert not list(tmp_path.parent.glob("escaped.txt"))


def test_download_zip_with_train_val_only(tmp_path, file_server):
    data = voc_tree_bytes(tmp_path, "ds", {"train": ["im0", "im1", "im2"], "val": ["im3", "im4"]},
                          fmt="zip")
    url = file_server.serve("/ds.zip", data)
    manifest = download.run(url_config(url), raw_dir=tmp_path / "raw", cache_dir=tmp_path / "cache", **FAST)
    assert [e["ids"] for e in manifest["splits"]["trainval"]] == ["ds/ImageSets/Main/train.txt"]
    assert [e["ids"] for e in manifest["splits"]["test"]] == ["ds/ImageSets/Main/val.txt"]
    assert "val.txt is the test split" in manifest["notes"][0]


def test_download_without_split_lists_holds_out_one_in_five(tmp_path, file_server):
    data = voc_tree_bytes(tmp_path, "ds", {})
    url = file_server.serve("/ds.tar.gz", data)
    raw = tmp_path / "raw"
    manifest = download.run(url_config(url), raw_dir=raw, cache_dir=tmp_path / "cache", **FAST)
    tv = (raw / manifest["splits"]["trainval"][0]["ids"]).read_text().split()
    te = (raw / manifest["splits"]["test"][0]["ids"]).read_text().split()
    assert sorted(tv + te) == [f"im{i}" for i in range(5)] and not set(tv) & set(te)


def test_voc_mirrors_user_first():
    urls = mirror_urls("VOCtest_06-Nov-2007.tar", "voc2007", ("http://my.host/{year}/",))
    assert urls[0] == "http://my.host/voc2007/VOCtest_06-Nov-2007.tar"
    assert urls[1] == "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar"
    assert any("thor.robots.ox.ac.uk" in u for u in urls) and any("pjreddie" in u for u in urls)


def test_voc0712_from_a_mirror(tmp_path, file_server, monkeypatch):
    """The VOC path with stand-in archives (the real MD5s are swapped for the fakes')."""
    fake = {}
    for key, (filename, _, year), (folder, split) in zip(
            ["voc2007_trainval", "voc2007_test", "voc2012_trainval"],
            download_mod.VOC_ARCHIVES.values(),
            [("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval")]):
        src = tmp_path / key
        make_voc_root(src / "VOCdevkit" / folder, {f"{key}_{i}": (32, 32, []) for i in range(2)},
                      {split: [f"{key}_{i}" for i in range(2)]})
        data = tar_bytes({p.relative_to(src).as_posix(): p.read_bytes()
                          for p in src.rglob("*") if p.is_file()}, mode="w")
        file_server.serve(f"/voc/{year}/{filename}", data)
        fake[key] = (filename, md5(data), year)
    monkeypatch.setattr(download_mod, "VOC_ARCHIVES", fake)
    monkeypatch.setattr(download_mod, "VOC_MIRRORS", ())
    cfg = config_from_dict({}, {"data.dataset": "voc0712",
                                "data.mirrors": [file_server.url("/voc/{year}/")]})
    manifest = download.run(cfg, raw_dir=tmp_path / "raw", cache_dir=tmp_path / "cache", **FAST)
    assert manifest["class_order"] == "voc"
    assert manifest["roots"] == ["VOCdevkit/VOC2007", "VOCdevkit/VOC2012"]
    assert [e["root"] for e in manifest["splits"]["trainval"]] == ["VOCdevkit/VOC2007",
                                                                   "VOCdevkit/VOC2012"]
    assert [e["ids"] for e in manifest["splits"]["test"]] == ["VOCdevkit/VOC2007/ImageSets/Main/test.txt"]
    # Both 2007 archives were merged into one VOCdevkit/VOC2007.
    assert len(list((tmp_path / "raw/VOCdevkit/VOC2007/JPEGImages").iterdir())) == 4


# ---------------------------------------------------------------- what may enter the cache

PORTAL = b"<!doctype html><html><body>Please log in to the hotel Wi-Fi</body></html>\n"


def archive_of(tmp_path: Path, fmt: str) -> bytes:
    return voc_tree_bytes(tmp_path, "VOC", {"trainval": ["im0", "im1"], "test": ["im2"]}, fmt=fmt)


@pytest.mark.parametrize("name, data, problem", [
    ("a.tar.gz", PORTAL, "not a valid .tar.gz archive (not a gzip file)"),
    ("a.tgz", tar_bytes({"x": b"1"}, mode="w"), "not a valid .tgz archive (not a gzip file)"),
    ("a.tar", PORTAL, "not a valid .tar archive"),
    ("a.zip", PORTAL, "not a valid .zip archive (File is not a zip file)"),
    ("a.zip", tar_bytes({"x": b"1"}), "not a valid .zip archive"),
    ("download", PORTAL, "not a .tar, .tar.gz or .zip archive"),
    ("a.tar", tar_bytes({"x": b"1" * 5000, "y": b"2"}, mode="w")[:512 + 5120],
     "cut short (no end-of-archive block after its 1 members)"),
    ("a.tar", tar_bytes({"x": b"1" * 5000}, mode="w")[:3000], "not a valid .tar archive"),
    ("a.tar.gz", tar_bytes({"x": bytes(range(256)) * 400})[:500], "not a valid .tar.gz archive"),
])
def test_check_archive_refuses_what_its_name_does_not_say(tmp_path, name, data, problem):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError) as info:
        check_archive(tmp_path / name)
    assert str(info.value).startswith(f"{name}: {problem}") and "\n" not in str(info.value)


def test_check_archive_lists_good_archives(tmp_path):
    for name, fmt in (("a.tar.gz", "tar.gz"), ("a.tar", "tar"), ("a.zip", "zip"), ("a.bin", "zip")):
        (tmp_path / name).write_bytes(archive_of(tmp_path, fmt))
        assert check_archive(tmp_path / name) > 5, name
    (tmp_path / "x.part").write_bytes(archive_of(tmp_path, "tar"))
    assert check_archive(tmp_path / "x.part", "x.tar") > 5  # typed by its final name
    with pytest.raises(DataError, match=r"^x\.zip: not a valid \.zip archive"):
        check_archive(tmp_path / "x.part", "x.zip")


def test_html_served_as_tar_gz_is_never_cached(tmp_path, file_server):
    url = file_server.serve("/d.tar.gz", PORTAL)
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    with pytest.raises(DownloadError) as info:
        download.run(url_config(url), raw_dir=raw, cache_dir=cache, **FAST)
    assert str(info.value) == (f"{_url_filename(url)}: download failed from every URL: {url}: "
                               "not a valid .tar.gz archive (not a gzip file)")
    assert list(cache.iterdir()) == [] and not raw.exists()
    file_server.routes["/d.tar.gz"].data = archive_of(tmp_path, "tar.gz")  # off the portal
    assert download.run(url_config(url), raw_dir=raw, cache_dir=cache, **FAST)["roots"] == ["VOC"]


@pytest.mark.parametrize("fmt", ["tar.gz", "tar", "zip"])
def test_a_body_cut_without_content_length_is_never_cached(tmp_path, file_server, fmt):
    data = archive_of(tmp_path, fmt)
    url = file_server.serve(f"/d.{fmt}", data, mode="cut-nolength")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=rf"{url}: not a valid \.{fmt} archive|"
                                            rf"{url}: cut short"):
        download.run(url_config(url), raw_dir=tmp_path / "raw", cache_dir=cache, **FAST)
    assert file_server.routes[f"/d.{fmt}"].hits == FAST["retries"]  # retried: it may come whole
    assert list(cache.iterdir()) == [] and not (tmp_path / "raw").exists()
    file_server.routes[f"/d.{fmt}"].mode = "ok"
    download.run(url_config(url), raw_dir=tmp_path / "raw", cache_dir=cache, **FAST)
    assert (cache / _url_filename(url)).read_bytes() == data


def test_a_bad_cached_copy_is_deleted_and_fetched_again(tmp_path, file_server, capsys):
    data = archive_of(tmp_path, "tar.gz")
    url = file_server.serve("/d.tar.gz", data)
    cached = tmp_path / "cache" / _url_filename(url)
    cached.parent.mkdir()
    cached.write_bytes(PORTAL)  # what an older frcnn kept from a captive portal
    manifest = download.run(url_config(url), raw_dir=tmp_path / "raw",
                            cache_dir=tmp_path / "cache", **FAST)
    assert manifest["roots"] == ["VOC"] and cached.read_bytes() == data
    assert file_server.routes["/d.tar.gz"].hits == 1
    err = capsys.readouterr().err
    assert (f"download: cached {cached} is unusable (not a valid .tar.gz archive (not a gzip "
            "file)); fetching it again\n") in err


def test_a_cached_copy_whose_size_changed_is_fetched_again(tmp_path, file_server, capsys):
    url = file_server.serve("/d.tar.gz", archive_of(tmp_path, "tar.gz"))
    dest = fetch([url], tmp_path / "d.tar.gz", validate=check_archive, **FAST)
    with open(dest, "ab") as f:
        f.write(b"junk")  # still lists as a .tar.gz: only the size says it changed
    fetch([url], dest, validate=check_archive, **FAST)
    assert dest.read_bytes() == file_server.routes["/d.tar.gz"].data
    assert file_server.routes["/d.tar.gz"].hits == 2
    size = len(file_server.routes["/d.tar.gz"].data)
    assert capsys.readouterr().err == (f"download: cached {dest} is unusable ({size + 4} bytes, "
                                       f"but {size} when downloaded); fetching it again\n")


def test_a_changed_upstream_file_is_fetched_again(tmp_path, file_server):
    old, new = archive_of(tmp_path, "tar.gz"), tar_bytes({"VOC/Annotations/n.xml": b"new"})
    url = file_server.serve("/d.tar.gz", old, etag='"v1"')
    dest = fetch([url], tmp_path / "d.tar.gz", validate=check_archive, **FAST)
    assert json.loads(meta_path(dest).read_text()) == {
        "url": url, "etag": '"v1"', "last_modified": None, "size": len(old)}
    route = file_server.routes["/d.tar.gz"]
    route.data, route.etag = new, '"v2"'
    fetch([url], dest, validate=check_archive, **FAST)
    assert route.conditionals == [(None, None), ('"v1"', None)]
    assert dest.read_bytes() == new and json.loads(meta_path(dest).read_text())["etag"] == '"v2"'


def test_304_keeps_the_cache(tmp_path, file_server, capsys):
    data = archive_of(tmp_path, "tar.gz")
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    url = file_server.serve("/d.tar.gz", data, last_modified=stamp)
    dest = fetch([url], tmp_path / "d.tar.gz", validate=check_archive, **FAST)
    mtime = dest.stat().st_mtime_ns
    assert fetch([url], dest, validate=check_archive, **FAST) == dest
    route = file_server.routes["/d.tar.gz"]
    assert route.hits == 2 and route.conditionals[-1] == (None, stamp)
    assert dest.read_bytes() == data and dest.stat().st_mtime_ns == mtime
    assert f"download: {url} unchanged (HTTP 304)" in capsys.readouterr().out
    assert leftovers(tmp_path) == []


def test_revalidation_that_fails_keeps_the_good_cache(tmp_path, file_server, capsys):
    data = archive_of(tmp_path, "tar.gz")
    url = file_server.serve("/d.tar.gz", data, etag='"v1"')
    dest = fetch([url], tmp_path / "d.tar.gz", validate=check_archive, **FAST)
    route = file_server.routes["/d.tar.gz"]
    route.data, route.etag = PORTAL, '"portal"'  # a new "version" that is no archive
    fetch([url], dest, validate=check_archive, **FAST)
    route.mode = "500"  # the server down
    fetch([url], dest, validate=check_archive, **FAST)
    assert dest.read_bytes() == data and leftovers(tmp_path) == []
    assert json.loads(meta_path(dest).read_text())["etag"] == '"v1"'
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"download: kept the cached {dest}: ") for line in err)
    assert "not a valid .tar.gz archive" in err[0] and "HTTP 500" in err[1]


def test_a_server_without_validators_is_not_asked_again(tmp_path, file_server):
    url = file_server.serve("/d.tar.gz", archive_of(tmp_path, "tar.gz"))
    dest = fetch([url], tmp_path / "d.tar.gz", validate=check_archive, **FAST)
    fetch([url], dest, validate=check_archive, **FAST)
    assert file_server.routes["/d.tar.gz"].hits == 1


def test_download_stage_picks_up_a_changed_upstream_archive(tmp_path, file_server):
    url = file_server.serve("/d.tar.gz", archive_of(tmp_path, "tar.gz"), etag='"v1"')
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    download.run(url_config(url), raw_dir=raw, cache_dir=cache, **FAST)
    assert sorted(p.name for p in cache.iterdir()) == [_url_filename(url),
                                                       f"{_url_filename(url)}.http.json"]
    route = file_server.routes["/d.tar.gz"]
    route.data = voc_tree_bytes(tmp_path / "v2", "NEW", {"trainval": ["im0"], "test": ["im1"]})
    route.etag = '"v2"'
    shutil.rmtree(raw)  # data/raw matching its manifest is reused without looking upstream
    assert download.run(url_config(url), raw_dir=raw, cache_dir=cache, **FAST)["roots"] == ["NEW"]
    assert route.conditionals == [(None, None), ('"v1"', None)]
