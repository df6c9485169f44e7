"""Evaluation: scikit-learn's numbers (`metrics`), the plots (`plots`), the page (`page`), the
files a run's evaluation leaves (`report`) and the child process that makes them (`worker`).
None of it imports torch."""
