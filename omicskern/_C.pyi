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
class BpeModel:
    """A Hugging Face tokenizer.json BPE pipeline compiled to tables (built by omicskern.tokenizers.hf_json)."""
    def __init__(self, vocab_size: int, chars: list[tuple[list[int], list[int]]], unk_id: int, fuse_unk: bool,
                 byte_ids: list[int], merge_a: list[int], merge_b: list[int], merge_new: list[int],
                 pre_tokenizer: str, lowercase: bool, added_raw: list[tuple[bytes, int, bool, bool]],
                 added_norm: list[tuple[bytes, int, bool, bool]]) -> None: ...
    @property
    def monotone(self) -> bool:
        """True when merges can run on the linear bucket queue (trained BPE tables)."""
    @property
    def backtrack(self) -> bool:
        """True when words of vocabulary letters use the backtracking encoder."""
    def compatible(self, x: int, y: int) -> bool:
        """Backtracking's pair test: BPE of the two valid tokens' concatenation gives them back (tests)."""
    def encode(self, seqs: list[str | bytes], num_threads: int = 0, return_soft_mask: bool = False,
               uppercase: bool = False, algo: int = 0, return_spans: bool = False
               ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.uint8] | None]:
        """Sequences -> (ids int32 [T], offsets int64 [N+1], soft_mask uint8 [T] or None), HF-exact ids.
        return_spans: a 4th item, int64 [T, 2]: each token's [start, end) byte offsets in its sequence.
        algo: 0 auto (backtracking where it applies, else 5), 1 heap (HF's algorithm), 2 bucket queue,
        3 bucket/heap with tiny windows (tests), 4 backtracking (else 5), 5 bucket/heap with windows."""
def bpe_train(seqs: list[str | bytes], vocab_size: int, special_tokens: list[str], min_frequency: int = 0,
              pre_tokenizer: str = "whitespace", initial_alphabet: str = "", limit_alphabet: int = -1
              ) -> tuple[list[str], list[tuple[int, int]]]:
    """Trains BPE merges (HF BpeTrainer's rules). Returns (vocab list[str] by id, merges list[(id, id)])."""

# --- single cell: rank-value and binning (csrc/cells/bind_cells.cpp) ------------------------
# (section: cells)
# CSR rows: row r is indptr[r]-base .. indptr[r+1]-base of indices/data; indptr/indices int32|int64,
# data float32|float64|int32|int64. Bad counts raise omicskern.errors.InvalidCountsError with
# .row (position among the selected rows), .column, .value, .kind.
def cells_rank_value(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int,
                     col_slot: npt.NDArray[np.int32], slot_token: npt.NDArray[np.int32],
                     slot_median: npt.NDArray[np.float64], totals: npt.NDArray[np.float64] | None = None,
                     rows: npt.NDArray[np.int64] | None = None, base: int = 0, max_genes: int = 2048,
                     cls_id: int = -1, eos_id: int = -1, target_sum: float = 10000.0, skip_empty: bool = True,
                     slot_col: npt.NDArray[np.int32] | None = None, num_threads: int = 0) -> dict[str, np.ndarray]:
    """Geneformer rank-value encoding: {ids int32 [T], offsets int64 [N+1], out_rows int64 [N],
    n_detected int64 [S], totals float64 [S], non_integer uint8 [S]} (S selected rows)."""
def cells_bin_count(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int,
                    col_token: npt.NDArray[np.int32], rows: npt.NDArray[np.int64] | None = None, base: int = 0,
                    num_threads: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """Kept nonzero genes per selected row, and non-integer flags."""
def cells_bin_values(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int,
                     col_token: npt.NDArray[np.int32], quantiles: npt.NDArray[np.float64],
                     rands: npt.NDArray[np.float64] | None = None, rows: npt.NDArray[np.int64] | None = None,
                     base: int = 0, max_len: int = 0, truncate: str = "sample", seed: int = 0,
                     global_rows: npt.NDArray[np.int64] | None = None, cls_id: int = -1, cls_value: int = 0,
                     skip_empty: bool = True, num_threads: int = 0) -> dict[str, np.ndarray]:
    """scGPT value binning: {ids int32 [T], values int32 [T], offsets int64 [N+1], out_rows int64 [N],
    n_detected int64 [S], non_integer uint8 [S]}."""
