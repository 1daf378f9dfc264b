"""The pretrain stage: the dual-path backbone trained on the encode stage's shards.

``data`` streams stacked-frame samples, ``losses`` defines the loss terms, ``trainer`` the
(DDP-capable) loop, ``probe`` the linear-probe check, ``run`` the stage end to end.
"""
