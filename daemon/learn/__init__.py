"""The learning room: what the daemon learns from the session's references, and from what it starts.

:mod:`.pairing` finds which frames are HR references and the LR frame each was taken in; :mod:`.learner` is the
worker that pairs, fits the paired library and promotes it while the daemon keeps serving; :mod:`.trainer` the
background trainer that fine-tunes a network in a separate process, round by round (:mod:`.train_round`);
:mod:`.prior_store` finds and loads the pretrained EM priors shipped in the package (``priors/<network>-x<S>/``,
trained by ``benchmarks/train_prior.py``; see ``priors/MODEL_CARD.md``). Imports the serving room (the child
process helpers), the publishing room (events), the configuration, state and wire rooms and :mod:`refscope.models`.
"""
