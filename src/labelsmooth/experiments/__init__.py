"""The ``labelsmooth compare`` experiment: data, models, losses, training loop, report and figures.

Only :mod:`.command`'s module body is imported by the CLI parser; numpy, scikit-learn, matplotlib and
tqdm are imported inside the functions that use them.
"""
