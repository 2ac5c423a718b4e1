"""End-to-end jobs: FASTA -> tokens -> embeddings; h5ad -> tokens -> embeddings."""
