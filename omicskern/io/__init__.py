"""Reading and writing: FASTA (:mod:`omicskern.io.fasta`), cell matrices and gene dictionaries,
output writers. Beside the layers (tokenizers, models and pipelines all use it); loads lazily."""
