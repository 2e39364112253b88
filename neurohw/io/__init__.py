"""File input/output: atomic writes (and, with the weight contract, HDF5 export)."""
