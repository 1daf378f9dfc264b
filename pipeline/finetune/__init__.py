"""The finetune stage: online SAC from pixels (DrQ-style) with the pretrained dual-path backbone.

* :mod:`~pipeline.finetune.replay_buffer` — frames stored once as uint8, stacks and n-step returns built at
  sampling time.
* :mod:`~pipeline.finetune.augment` — random-shift augmentation.
* :mod:`~pipeline.finetune.sac` — the algorithm.
* :mod:`~pipeline.finetune.encoder` — the backbone checkpoint: pretrained, scratch or frozen.
* :mod:`~pipeline.finetune.workspace` — the workspace: environments, agent, replay, train / evaluate / export.
* :mod:`~pipeline.finetune.checkpoint` — resumable state (a corrupt one is set aside, not read).
* :mod:`~pipeline.finetune.run` — the stage: ``run(backbone, out, section) -> FinetuneSummary``, DVCLive curves.
* :mod:`~pipeline.finetune.report` — return summaries, the evaluation video.

Heavy libraries are imported by the submodules, not here.
"""
