"""Encode stage: CLIP targets into the dataset format of :mod:`pipeline.dataset`, with a dataset card.

Library entry point: ``pipeline.encode.run.run`` (episodes + flow + annotations -> dataset folder,
returns an ``EncodeSummary``). The format itself (schema, writer, reader, Hub push/pull) is
:mod:`pipeline.dataset`'s. Nothing is imported here, so ``pipeline.encode.run`` stays the module.
"""
