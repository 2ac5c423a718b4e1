"""Every code block of README.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace (a later block may use an earlier one's
names), in a folder that holds the inputs they name: real data from tests/data (the lambda genome,
DNABERT-2's tokenizer.json, a PBMC h5ad) and checkpoint folders laid out as the releases are,
with tiny random weights. ``bash`` blocks run in the same folder with ``omicskern`` on PATH.
A block preceded by ``<!-- docs-test: skip REASON -->`` is skipped (install commands, which CI
itself runs; blocks that need a CUDA GPU); a skip without a reason is an error.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->")


def blocks(page: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, skip reason or None) of every fenced block."""
    out, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i + 1
        j = start
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        sk = SKIP.search(prev)
        reason = None
        if sk:
            reason = sk.group(1).strip()
            if not reason:
                raise AssertionError(f"{page.name}:{i + 1}: docs-test skip without a reason")
        out.append((start + 1, lang, "\n".join(lines[start:j]), reason))
        i = j + 1
    return out


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """The inputs the pages name."""
    from Bio import bgzf

    from tests.models import _folders

    d = tmp_path_factory.mktemp("docs")
    shutil.copy(DATA / "lambda_phage.fa", d / "lambda_phage.fa")
    with bgzf.BgzfWriter(str(d / "genome.fa.gz")) as f:
        f.write((DATA / "lambda_phage.fa").read_text())
    shutil.copy(DATA / "dnabert2_tokenizer.json", d / "tokenizer.json")
    shutil.copy(DATA / "sc" / "pbmc_10x_v3_small.h5ad", d / "atlas.h5ad")
    import anndata as ad

    genes = ad.read_h5ad(d / "atlas.h5ad", backed="r").var["ensembl_id"].tolist()
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{g: 4 + i for i, g in enumerate(genes)}}
    with open(d / "token_dictionary.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(d / "gene_median_dictionary.pkl", "wb") as f:
        pickle.dump({g: 1.0 + (i % 7) / 4 for i, g in enumerate(genes)}, f)
    symbols = ad.read_h5ad(d / "atlas.h5ad", backed="r").var["gene_symbol"].tolist()
    import json

    (d / "vocab.json").write_text(json.dumps({"<pad>": 0, "<cls>": 1, "<eoc>": 2,
                                               **{s: 3 + i for i, s in enumerate(dict.fromkeys(symbols))}}))
    _folders.dnabert2(d / "DNABERT-2-117M")
    _folders.nucleotide_transformer(d / "nucleotide-transformer-v2-50m-multi-species")
    _folders.hyenadna(d / "hyenadna-small-32k-seqlen")
    _folders.geneformer(d / "Geneformer-V2-104M")  # with its own dictionaries, as the release keeps them
    _folders.scgpt(d / "scGPT_human")  # args.json + vocab.json (PBMC symbols) + weights
    np.random.seed(0)
    return d


def _run_python(code: str, ns: dict, where: str) -> None:
    try:
        exec(compile(code, where, "exec"), ns)  # noqa: S102 - the docs' own code
    except Exception as e:
        raise AssertionError(f"{where}: {type(e).__name__}: {e}") from e


def _run_bash(code: str, cwd: Path, where: str) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")  # the checkout under test
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"{where}: exit {r.returncode}\n{code}\n--- stderr ---\n{r.stderr[-3000:]}")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_code_blocks_run(page, workdir, monkeypatch):
    found = blocks(page)
    runnable = [b for b in found if b[1] in ("python", "bash", "sh") and b[3] is None]
    if not runnable:
        pytest.skip(f"{page.name}: no runnable code block")
    monkeypatch.chdir(workdir)
    ns: dict = {"__name__": f"docs_{page.stem}"}
    for line, lang, code, _ in runnable:
        where = f"{page.relative_to(ROOT)}:{line}"
        if lang == "python":
            _run_python(textwrap.dedent(code), ns, where)
        else:
            _run_bash(code, workdir, where)


def test_unlabelled_blocks_are_not_code():
    """A fence without a language is output or a layout, never code that escapes the test."""
    for page in PAGES:
        for line, lang, code, _ in blocks(page):
            if not lang:
                assert not re.search(r"^\s*(import |from \w+ import|omicskern |pip )", code, re.M), \
                    f"{page.name}:{line}: a code block without a language tag"
