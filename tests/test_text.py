import hashlib
import http.server
import io
import threading

import pytest

from seqlm import text as T
from seqlm.errors import ConfigError, CorpusError


def test_builtin_corpus_is_offline_and_large():
    text = T.read_corpus("builtin")
    assert 400_000 < len(text) < 600_000
    assert "\r" not in text


def test_file_directory_and_stdin(tmp_path, monkeypatch):
    (tmp_path / "b.txt").write_bytes(b"second\r\nline")
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbffirst\rline")
    (tmp_path / "skip.md").write_text("not read")
    assert T.read_corpus(str(tmp_path)) == "first\nline\nsecond\nline"
    assert T.read_corpus(str(tmp_path / "b.txt")) == "second\nline"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("from stdin".encode())))
    assert T.read_corpus("-") == "from stdin"


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file.*builtin, timemachine"):
        T.read_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(CorpusError, match="no .txt files"):
        T.read_corpus(str(tmp_path))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(CorpusError, match="empty"):
        T.read_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\x00\x00\x01")
    with pytest.raises(CorpusError, match="binary"):
        T.read_corpus(str(tmp_path / "bin.txt"))


def test_latin1_names_the_byte_offset_and_encoding_option_reads_it(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match="0xe9 at offset 3.*`encoding`"):
        T.read_corpus(str(path))
    assert T.read_corpus(str(path), encoding="latin-1") == "café au lait"


def test_clean_letters_is_the_chapters_and_keeps_lines_apart():
    assert T.clean("The Time\nMachine, by H. G. Wells!", "letters") == \
        "the time machine by h g wells "
    assert T.clean("A\nB", "lower") == "a\nb"
    with pytest.raises(ConfigError, match="none, lower, letters"):
        T.clean("x", "upper")


def test_timemachine_from_seqlm_data(data_env):
    text = T.read_corpus("timemachine")
    assert len(text) == 178_979
    assert len(T.clean(text, "letters")) == 173_428


class _Server:
    def __init__(self, payload: bytes):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/corpus.txt"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def fake_corpus(monkeypatch, tmp_path):
    payload = "a fixture corpus served on loopback\n".encode() * 10
    server = _Server(payload)
    entry = T.NamedCorpus("fixture", server.url, hashlib.sha1(payload).hexdigest(), "test")
    monkeypatch.setitem(T.CORPORA, "fixture", entry)
    monkeypatch.setenv("SEQLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEQLM_DATA", raising=False)
    yield entry, payload
    server.close()


def test_download_once_verified_and_cached(fake_corpus, tmp_path):
    entry, payload = fake_corpus
    path = T.fetch("fixture")
    assert path == tmp_path / "cache" / "fixture.txt"
    assert path.read_bytes() == payload
    T.CORPORA["fixture"] = T.NamedCorpus("fixture", "http://127.0.0.1:9/gone", entry.sha1, "")
    assert T.fetch("fixture") == path  # served from the cache, no network needed
    assert [p.name for p in path.parent.iterdir()] == ["fixture.txt"]  # no temp files left


def test_checksum_mismatch_caches_nothing(fake_corpus, tmp_path, monkeypatch):
    entry, _ = fake_corpus
    monkeypatch.setitem(T.CORPORA, "fixture", T.NamedCorpus("fixture", entry.url, "0" * 40, ""))
    with pytest.raises(CorpusError, match="checksum mismatch.*nothing was cached"):
        T.fetch("fixture")
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_message_names_url_and_place(fake_corpus, monkeypatch):
    monkeypatch.setitem(T.CORPORA, "fixture",
                        T.NamedCorpus("fixture", "http://127.0.0.1:9/x.txt", "0" * 40, ""))
    with pytest.raises(CorpusError, match=r"cannot download http://127.0.0.1:9/x.txt.*SEQLM_DATA"):
        T.fetch("fixture")


def test_seqlm_data_copy_with_wrong_sha1_is_ignored(fake_corpus, tmp_path, monkeypatch):
    entry, payload = fake_corpus
    data = tmp_path / "data"
    data.mkdir()
    (data / "fixture.txt").write_text("tampered")
    monkeypatch.setenv("SEQLM_DATA", str(data))
    assert T.fetch("fixture").read_bytes() == payload  # downloaded instead


def test_unwritable_cache(fake_corpus, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SEQLM_CACHE", str(blocker / "sub"))
    with pytest.raises(CorpusError, match="not writable.*SEQLM_CACHE"):
        T.fetch("fixture")
