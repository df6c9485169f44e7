"""The names of a dataset's split folders (any case): the folder layout `discover` reads, and the
split folders a Hugging Face metadata.csv may sit in (`table.find_metadata`)."""

TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test", "testing")
