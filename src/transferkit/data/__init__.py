"""Data: finding the images (`discover`, `cifar`), decoding them (`decode`, torch-free), training
views (`views`) and torch datasets and loaders (`datasets`)."""
