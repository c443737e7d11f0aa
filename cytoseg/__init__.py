"""cytoseg: the model side of the platform as a library, without Django.

Segmentation backends and their registry (``cytoseg.backends``), trainers behind one interface
(``cytoseg.trainers``), metrics and matching, contours and polygon geometry, image decoding,
the synthetic Diff-Quik generator and paper C's cluster augmentation, dataset formats (nnU-Net,
Cellpose, COCO encodings) and evaluation. Usable from a notebook: nothing here imports Django or
reads Django settings; the apps (annotations, inference, training, ...) build on it.
"""
