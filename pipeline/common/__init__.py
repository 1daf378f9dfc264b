"""Machinery every stage shares; nothing here knows about a task, a model or a dataset field.

* :mod:`~pipeline.common.errors`: :class:`UserError`, the errors a user can fix (exit 2, no traceback);
* :mod:`~pipeline.common.io`: atomic, deterministic writes (files, folders, ``.npz``, JSON) and hashing;
* :mod:`~pipeline.common.stage`: what a stage's ``run()`` returns and how its metrics file is written;
* :mod:`~pipeline.common.registry`: backend registries (lazy ``module:attr`` entries chosen by a param);
* :mod:`~pipeline.common.weights`: model weights (local, cache, download, the random-init policy);
* :mod:`~pipeline.common.device`: the torch device (``auto`` / ``cpu`` / ``cuda[:N]``);
* :mod:`~pipeline.common.rendering`: headless MuJoCo rendering (``MUJOCO_GL=egl``);
* :mod:`~pipeline.common.logs`: logging and progress bars;
* :mod:`~pipeline.common.seeding`: the seeds of named random streams, derived from one base seed;
* :mod:`~pipeline.common.curves`: DVCLive learning curves;
* :mod:`~pipeline.common.probe`: the linear (or MLP) probe with episode-grouped folds and bootstrap CIs.
"""
