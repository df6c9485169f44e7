"""What is wrong with a dataset, found before training on it: exact and near duplicates (and
train/val leakage), images with two labels, likely label errors (cleanlab on out-of-fold
probabilities of the cached-feature head), outliers, class balance and bad images.

`images` reads each file's content hash and properties (cached per image), `checks` finds the
problems from those and the cached features, `diagnose` runs it all for `transferkit doctor`
(and the cheap part for `train`), `page` writes doctor.html. No torch outside `diagnose`."""
