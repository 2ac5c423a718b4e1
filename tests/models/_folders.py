"""Checkpoint folders as the releases lay them out (config.json, weights, tokenizer files), with
tiny random weights, one builder per registered model type: the contract test runs over them and
fails for a registered type that has no builder here."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "data"


def _save(model: torch.nn.Module, folder: Path, config: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial biases and norms, so that a wrong wiring shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    # tied tensors are saved once, as transformers does
    seen, out = {}, {}
    for k, v in sd.items():
        key = (v.data_ptr(), tuple(v.shape))
        if key not in seen:
            seen[key] = k
            out[k] = v
    save_file(out, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def dnabert2(folder: Path) -> Path:
    from omicskern.models.dnabert2 import DNABERT2, DNABERT2Config

    cfg = dict(vocab_size=4096, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
               max_position_embeddings=512, architectures=["BertForMaskedLM"],
               auto_map={"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel",
                         "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM"})
    torch.manual_seed(1)
    m = DNABERT2(DNABERT2Config.from_dict(cfg), pooler=True, mlm_head=True)
    _save(m, folder, cfg)
    shutil.copy(DATA / "dnabert2_tokenizer.json", folder / "tokenizer.json")
    return folder


def nucleotide_transformer(folder: Path) -> Path:
    """NT-v2 layout (rotary, gated FFN): its released 6-mer vocabulary is the tokenizer default."""
    from omicskern.models.nucleotide_transformer import NucleotideTransformer, NucleotideTransformerConfig

    cfg = dict(vocab_size=4107, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=2050, position_embedding_type="rotary", add_bias_fnn=False, pad_token_id=1,
               mask_token_id=2, tie_word_embeddings=False, architectures=["EsmForMaskedLM"],
               auto_map={"AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM"})
    torch.manual_seed(2)
    return _save(NucleotideTransformer(NucleotideTransformerConfig.from_dict(cfg)), folder, cfg)


def hyenadna(folder: Path) -> Path:
    from omicskern.models.hyenadna import HyenaDNA, HyenaDNAConfig

    cfg = dict(d_model=32, n_layer=2, d_inner=64, vocab_size=12, pad_vocab_size_multiple=8,
               layer={"_name_": "hyena", "emb_dim": 5, "filter_order": 16, "l_max": 514, "modulate": True, "w": 10})
    torch.manual_seed(3)
    return _save(HyenaDNA(HyenaDNAConfig.from_dict(cfg)), folder, cfg)


def geneformer(folder: Path) -> Path:
    """Geneformer V2 layout: a BertForMaskedLM next to token / median dictionaries (here over the
    genes seen in most cells of the real PBMC file)."""
    import anndata as ad

    from omicskern.models.geneformer import Geneformer, GeneformerConfig

    adata = ad.read_h5ad(DATA / "sc" / "pbmc_10x_v3_small.h5ad", backed="r")
    X = adata.to_memory().X
    seen = np.asarray((X > 0).sum(0)).ravel()
    genes = adata.var["ensembl_id"].to_numpy()[np.argsort(-seen, kind="stable")[:60]]
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{g: 4 + i for i, g in enumerate(genes)}}
    cfg = dict(model_type="bert", architectures=["BertForMaskedLM"], vocab_size=len(tokens), hidden_size=32,
               num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, hidden_act="relu",
               max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(4)
    _save(Geneformer(GeneformerConfig.from_dict(cfg)), folder, cfg)
    with open(folder / "token_dictionary_gc_test.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(folder / "gene_median_dictionary_gc_test.pkl", "wb") as f:
        pickle.dump({g: 1.0 + 0.25 * (i % 5) for i, g in enumerate(genes)}, f)
    return folder


def scgpt(folder: Path) -> Path:
    """scGPT's released layout: args.json (the released key set, tiny sizes), vocab.json (genes
    first, then <pad>/<cls>/<eoc> as GeneVocab.append_token puts them) and the weights under the
    released FlashMHA names (model.safetensors here; best_model.pt is tested on the shared fixture).
    The genes are the symbols seen in most cells of the real PBMC file."""
    import anndata as ad

    from omicskern.models.scgpt import ScGPT, ScGPTConfig

    adata = ad.read_h5ad(DATA / "sc" / "pbmc_10x_v3_small.h5ad", backed="r")
    X = adata.to_memory().X
    seen = np.asarray((X > 0).sum(0)).ravel()
    symbols = adata.var["gene_symbol"].astype(str).to_numpy()[np.argsort(-seen, kind="stable")]
    genes = list(dict.fromkeys(symbols))[:60]
    vocab = {g: i for i, g in enumerate(genes)}
    vocab.update({t: len(genes) + i for i, t in enumerate(("<pad>", "<cls>", "<eoc>"))})
    args = json.loads((DATA / "fixtures" / "scgpt_tiny" / "args.json").read_text())
    args.update(embsize=32, nheads=4, d_hid=48, nlayers=2, n_layers_cls=3)
    torch.manual_seed(5)
    m = ScGPT(ScGPTConfig.from_dict({**args, "vocab_size": len(vocab)}))
    _save(m, folder, {})
    (folder / "config.json").unlink()  # released scGPT folders have args.json, no config.json
    (folder / "args.json").write_text(json.dumps(args, indent=1))
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1))
    return folder


def caduceus(folder: Path) -> Path:
    """Caduceus-PS laid out as the release: the released config keys (string-keyed complement_map,
    padded vocab), the tied aliases (reverse in/out_proj, LM head) absent from model.safetensors."""
    from safetensors.torch import load_file, save_file

    from omicskern.models.caduceus import Caduceus, CaduceusConfig

    comp = {str(i): i for i in range(16)} | {"7": 10, "10": 7, "8": 9, "9": 8}
    cfg = dict(model_type="caduceus", architectures=["CaduceusForMaskedLM"], d_model=8, n_layer=2, vocab_size=12,
               pad_vocab_size_multiple=8, ssm_cfg={"d_state": 4, "d_conv": 4, "expand": 2, "dt_rank": "auto",
                                                   "bias": False, "conv_bias": True},
               rms_norm=True, fused_add_norm=True, residual_in_fp32=False, norm_epsilon=1e-5, bidirectional=True,
               bidirectional_strategy="add", bidirectional_weight_tie=True, rcps=True, complement_map=comp)
    torch.manual_seed(5)
    m = Caduceus(CaduceusConfig.from_dict(cfg))
    _save(m, folder, cfg)
    sd = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if k not in m.tied_keys()}, str(folder / "model.safetensors"))
    return folder


BUILDERS = {"dnabert2": dnabert2, "nucleotide_transformer": nucleotide_transformer, "hyenadna": hyenadna,
            "geneformer": geneformer, "scgpt": scgpt,
            "caduceus": caduceus}

#: tokenizer options the real-data batches need (PBMC's var_names are Ensembl IDs; scGPT's keys are symbols)
TOKENIZER_OPTIONS = {"scgpt": {"gene_column": "gene_symbol"}}


def config_file(folder: Path) -> Path:
    """The file a folder's model type is read from: config.json, or scGPT's args.json."""
    return folder / "config.json" if (folder / "config.json").is_file() else folder / "args.json"


def values_like(model, n: int):
    """Per-token values a model needs beside its ids (scGPT's bins), else None."""
    return np.full(n, 3, np.int32) if model.model_type == "scgpt" else None


def lambda_windows(lengths=(301, 97, 188)) -> list[str]:
    """Real sequence: windows of the lambda phage genome at odd lengths, the second soft-masked."""
    from omicskern.io.fasta import FastaFile

    with FastaFile(DATA / "lambda_phage.fa") as fa:
        name = next(iter(fa.records()))[0]
        seq = fa.sequence(name)
    out, start = [], 1000
    for i, n in enumerate(lengths):
        s = seq[start:start + n]
        out.append(s.lower() if i == 1 else s)
        start += 3 * n
    return out


def real_batch(model, n_cells: int = 24):
    """The model's own tokenizer on real data: lambda windows, or PBMC cells."""
    tok = model.get_tokenizer(**TOKENIZER_OPTIONS.get(model.model_type, {}))
    if model.kind == "cell":
        import anndata as ad

        return tok.tokenize(ad.read_h5ad(DATA / "sc" / "pbmc_10x_v3_small.h5ad"))[:n_cells]
    return tok.encode_batch(lambda_windows(), padding=False)
