"""The file formats behind `neurohw.data` (the entry point: `load_splits`, `load_raw`, `DATASETS`).

`common`: the raw data of a dataset as read (`RawData`), checks of arrays and labels, sha256 digests;
`files`: your own data, `arrays` (.npz or HDF5) and `folder` (train/<class>/*.png, test/<class>/*.png);
`benchmarks`: CIFAR-100, SVHN and ImageNet 32×32 in their published on-disk formats;
`matlab`: a reader of MATLAB 5 MAT-files (SVHN's .mat), so that no SciPy is needed.
"""
