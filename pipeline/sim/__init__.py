"""Facts on the simulator's side that several stages share.

* :mod:`~pipeline.sim.episodes`: the episode files collect writes (schema, validation, loading);
* :mod:`~pipeline.sim.benchmark`: the benchmark convention (action repeat per task, frame counting, published anchors);
* :mod:`~pipeline.sim.task_physics`: each task's MuJoCo model without a renderer, compiled once per process;
* :mod:`~pipeline.sim.joint_state`: the probes' joint-state target (hinges as cos/sin, velocities);
* :mod:`~pipeline.sim.observation`: the observation facts a backbone was pretrained on (``meta.observation``).
"""
