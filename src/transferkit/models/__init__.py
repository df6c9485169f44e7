"""Models: the backbone registry (`backbones`), weight sources (`weights`), preprocessing
(`preprocess`, torch-free), the classifier (`classifier`) and the saved bundle (`bundle`)."""
