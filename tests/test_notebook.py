"""notebooks/chapter8.ipynb: committed with its outputs, and still running top to bottom.

The notebook's cells assert what they show, so executing it is the test. Its kernel is this
interpreter (a kernel spec written to a temporary folder), so the test needs no kernel
installed beforehand, and the notebook sees the same seqlm as the tests.

To refresh the committed outputs after editing the notebook::

    python tests/test_notebook.py     # executes it and writes it back with its outputs
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "chapter8.ipynb"
KERNEL = "seqlm-python3"
TIME_LIMIT = 120  # seconds: the notebook must run in under 2 minutes on 2 busy cores
# Inline code, formulas, HTML and addresses are not prose: the language ratio skips them.
NOT_PROSE = (r"```.*?```", r"`[^`]*`", r"\$\$.*?\$\$", r"\$[^$]*\$", r"<[^>]+>", r"https?://\S+")


def execute(path: Path = NOTEBOOK, *, kernel_dir: Path, timeout: int = TIME_LIMIT):
    """Runs every cell of the notebook at ``path`` in a fresh kernel of this interpreter.

    Returns:
        ``(notebook, seconds)``: the executed notebook (outputs filled in) and the wall time.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised (an assert failed, ...).
    """
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    write_kernel_spec(kernel_dir / "kernels" / KERNEL)  # argv: this sys.executable
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(kernel_dir), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=timeout,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}  # what a reader's Jupyter opens it with
    return nb, time.perf_counter() - start


def test_committed_notebook_has_the_output_of_every_code_cell():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert len(code) >= 15
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), "re-run it top to bottom: " + __doc__
    for cell in code:
        assert cell.outputs, f"a code cell without output: {cell.source[:60]!r}"
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:60]
    headings = " ".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    for term in ("序列模型", "文本预处理", "语言模型", "随机采样", "顺序分区", "困惑度",
                 "循环神经网络", "预热", "隐状态", "通过时间反向传播", "梯度裁剪", "截断",
                 "词元", "词表", "自回归", "独立同分布", "独热", "共享", "梯度爆炸", "梯度消失",
                 "练习"):
        assert term in headings
    # Every cell but the closing timer checks what it shows.
    assert all("assert" in cell.source for cell in code[:-1])


def prose_counts(markdown: str) -> tuple[int, int]:
    """``(Chinese characters, English words)`` in ``markdown`` outside code, formulas, HTML
    and addresses."""
    for pattern in NOT_PROSE:
        markdown = re.sub(pattern, " ", markdown, flags=re.S)
    return (len(re.findall(r"[\u4e00-\u9fff]", markdown)),
            len(re.findall(r"[A-Za-z][A-Za-z0-9'-]*", markdown)))


def test_prose_counts_skip_code_and_formulas():
    assert prose_counts("隐状态 `hidden_state` $H_t$ (hidden state)") == (3, 2)
    assert prose_counts("```python\nx = 1\n```\n词元 $$\\sum_t l_t$$ token") == (2, 1)


def test_the_notebook_teaches_in_chinese_with_the_chapters_figures():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    chinese, english = prose_counts(markdown)
    assert chinese >= 1.5 * english, (chinese, english)  # at least 3 : 2
    images = {cell.source: sum("image/png" in out.get("data", {}) for out in cell.outputs)
              for cell in nb.cells if cell.cell_type == "code"}
    for figure in ("Fig. 8-1", "Fig. 8-3", "perplexity", "Zipf"):
        assert any(figure in source and count for source, count in images.items()), figure


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_under_two_minutes(tmp_path, monkeypatch,
                                                             timemachine_path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("SEQLM_DATA", str(timemachine_path.parent))
    monkeypatch.setenv("JUPYTER_PATH", os.environ.get("JUPYTER_PATH", ""))
    nb, seconds = execute(kernel_dir=tmp_path)
    assert seconds < TIME_LIMIT
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs for cell in code)
    assert "整本笔记本运行用时" in code[-1].outputs[0]["text"]


if __name__ == "__main__":
    import tempfile

    import nbformat

    with tempfile.TemporaryDirectory() as folder:
        notebook, wall = execute(kernel_dir=Path(folder))
    nbformat.write(notebook, NOTEBOOK)
    print(f"{NOTEBOOK}: executed in {wall:.1f} s and saved with its outputs", file=sys.stderr)
