"""The learning room: what the daemon and the command line learn from, beyond the session's own references.

:mod:`.prior_store` finds and loads the pretrained EM priors shipped in the package (``priors/<network>-x<S>/``, trained by
``benchmarks/train_prior.py``; see ``priors/MODEL_CARD.md``).
"""
