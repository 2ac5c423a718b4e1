# Type stubs for the C++ extension omicskern._C (built from csrc/ by setup.py).
# Each area keeps its own section; edit only yours.
import numpy as np
import numpy.typing as npt

has_openmp: bool

def hardware_threads() -> int:
    """Number of threads used when a call asks for all of them (num_threads <= 0)."""

# --- common: ragged batches (csrc/common/ragged.cpp) ---------------------------------------
# (section: common)

# --- DNA: char and k-mer tokenizers (csrc/dna/bind_dna.cpp) --------------------------------
# (section: dna)

# --- DNA: BPE (csrc/dna/bind_bpe.cpp) -------------------------------------------------------
# (section: bpe)

# --- single cell: rank-value and binning (csrc/cells/bind_cells.cpp) ------------------------
# (section: cells)
