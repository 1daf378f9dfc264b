"""The finetune stage: online SAC from pixels (DrQ-style) with the pretrained dual-path backbone.

* :mod:`~pipeline.finetune.replay_buffer` — frames stored once as uint8, stacks and n-step returns built at sampling time.
* :mod:`~pipeline.finetune.augment` — random-shift augmentation.
* :mod:`~pipeline.finetune.sac` — the algorithm.
* :mod:`~pipeline.finetune.encoder` — the backbone checkpoint: pretrained, scratch or frozen.
* :mod:`~pipeline.finetune.trainer` — the online loop, evaluation, checkpoints, outputs.
* :mod:`~pipeline.finetune.report` — metrics, learning curves, evaluation video.

Heavy libraries are imported by the submodules, not here.
"""
