# Type stubs for the C++ extension omicskern._C (built from csrc/ by setup.py).
# Each area keeps its own section; edit only yours.
import numpy as np
import numpy.typing as npt

has_openmp: bool

def hardware_threads() -> int:
    """Number of threads used when a call asks for all of them (num_threads <= 0)."""

# --- common: ragged batches (csrc/common/ragged.cpp) ---------------------------------------
# (section: common)
def ragged_finalize(ids: npt.NDArray[np.int32] | npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64],
                    prefix: list[int], suffix: list[int], max_length: int = -1, keep_end: bool = False,
                    num_threads: int = 0) -> tuple[np.ndarray, npt.NDArray[np.int64]]:
    """Adds prefix/suffix ids around every sequence, truncating content to max_length in total."""
def ragged_pad(ids: np.ndarray, offsets: npt.NDArray[np.int64], pad_value: int | float, length: int = -1,
               left: bool = False, num_threads: int = 0) -> tuple[np.ndarray, npt.NDArray[np.bool_]]:
    """Ragged -> ([n, length] padded, [n, length] bool mask of real tokens)."""

# --- DNA: char and k-mer tokenizers (csrc/dna/bind_dna.cpp) --------------------------------
# (section: dna)
def dna_char_encode(seqs: list | tuple, lut: npt.NDArray[np.int32], allowed: str = "",
                    return_soft_mask: bool = False, num_threads: int = 0, chunk: int = 262144,
                    prefix: list[int] = ..., suffix: list[int] = ...
                    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.uint8] | None]:
    """One token per byte, lut[byte] (256 entries; negative = invalid -> InvalidSequenceError).
    prefix/suffix ids are written around every sequence. Returns (ids [T], offsets [N+1], soft_mask [T] | None)."""
def dna_kmer_encode(seqs: list | tuple, k: int, overlap: bool, cls_lut: npt.NDArray[np.uint8], kmer_base: int,
                    single_base: int, n_id: int, unk_id: int, allowed: str = "", return_soft_mask: bool = False,
                    num_threads: int = 0, chunk: int = 262144, prefix: list[int] = ..., suffix: list[int] = ...
                    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.uint8] | None]:
    """k-mer ids (k = 3..8). overlap=False: Nucleotide Transformer rules; True: DNABERT-1 windows.
    cls_lut[byte]: 0..3 = A,T,C,G; 4 = N; 5 = unknown token; 6 = invalid (error)."""

# --- DNA: BPE (csrc/dna/bind_bpe.cpp) -------------------------------------------------------
# (section: bpe)

# --- single cell: rank-value and binning (csrc/cells/bind_cells.cpp) ------------------------
# (section: cells)
