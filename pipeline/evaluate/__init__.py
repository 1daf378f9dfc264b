"""The evaluate stage: does a backbone help control? (held-out probe, state and frozen SAC arms, CIs).

Entry: :func:`pipeline.evaluate.run.run`. Protocol constants (action repeats, frame counting,
published anchors) live in :mod:`pipeline.sim.benchmark`, shared with collect and finetune.
"""
