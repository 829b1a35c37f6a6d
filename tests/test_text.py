import hashlib
import http.server
import io
import threading

import pytest

from seqlm import text as T
from seqlm.cleaning import _HEADER_CHARS
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
    with pytest.raises(CorpusError, match="no such file.*builtin, python-source, timemachine"):
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
    with pytest.raises(ConfigError, match="none, lower, letters, gutenberg"):
        T.clean("x", "upper")


BOOK = ("The Project Gutenberg eBook of A Tale\nLicence words.\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK A TALE ***\n\nIt was the best.\nThe end.\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK A TALE ***\nSection 5. Donations.\n")


def test_clean_gutenberg_keeps_each_book_between_its_markers():
    assert T.clean(BOOK, "gutenberg") == "\nIt was the best.\nThe end.\n"
    two = BOOK + "\n" + BOOK.replace("best", "worst")  # a directory of two books
    assert T.clean(two, "gutenberg") == \
        "\nIt was the best.\nThe end.\n\nIt was the worst.\nThe end.\n"
    old = ("Header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN\nText.\n"
           "End of the Project Gutenberg EBook\nx")
    assert T.clean(old, "gutenberg") == "Text.\n"
    assert T.clean("no markers\nat all", "gutenberg") == "no markers\nat all"
    ended = "The book.\n*** END OF THIS PROJECT GUTENBERG EBOOK X\nlicence"
    assert T.clean(ended, "gutenberg") == "The book.\n"


def test_clean_gutenberg_gives_back_a_long_start_without_a_marker():
    marker = "*** START OF THE PROJECT GUTENBERG X\n"
    text = "line of prose\n" * (_HEADER_CHARS // 10) + marker + "end"
    assert T.clean(text, "gutenberg") == text.replace(marker, "")


def test_alice_without_its_licence(data_env):
    path = data_env.parent / "alice.txt"
    if not path.exists():
        pytest.skip(f"{path} is not there")
    text = T.clean(T.read_corpus(str(path)), "gutenberg")
    assert text.lstrip().startswith("[Illustration]") and text.rstrip().endswith("THE END")
    assert "Gutenberg" not in text


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
        # a short poll: shutdown() waits up to one poll interval (0.5 s by default)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

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


def test_python_source_is_the_stdlib_sorted_without_tests_or_huge_files(tmp_path):
    root = tmp_path / "lib"
    for name, body in {"b.py": "x = 1\n", "a/z.py": "def f():\r\n    return 2\n",
                       "a/c.py": "import b\n", "test/t.py": "bad\n",
                       "site-packages/p.py": "pkg\n", "a/tests/u.py": "bad\n",
                       "a/notes.txt": "not python\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body, encoding="utf-8", newline="")
    (root / "huge.py").write_text("#" * (T.PYTHON_SOURCE_FILE_BYTES + 1))
    (root / "latin.py").write_bytes(b"s = '\xe9'\n")
    files = [p.relative_to(root).as_posix() for p in T.python_source_files(root)]
    assert files == ["a/c.py", "a/z.py", "b.py", "latin.py"]
    text = T._python_source_text(root)
    assert text == "# a/c.py\nimport b\n\n# a/z.py\ndef f():\n    return 2\n\n# b.py\nx = 1\n\n"
    assert T._python_source_text(root, max_chars=40) == "# a/c.py\nimport b\n\n"


@pytest.mark.slow  # reads the standard library
def test_python_source_corpus_is_offline_and_capped():
    text = T.read_corpus("python-source")
    assert text.startswith("# __future__.py\n") and "\ndef " in text
    assert 1_000_000 < len(text) <= T.PYTHON_SOURCE_CHARS
    assert "# test/" not in text and "site-packages" not in text.split("\n", 1)[0]
