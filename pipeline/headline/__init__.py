"""The headline stage: the few figures that say whether a run worked, in one small metrics file.

Entry: :func:`pipeline.headline.run.run`. It reads the other stages' metrics files and computes
nothing new; each figure's details (per task, with CIs) stay in the stage's own file.
"""
