"""Synthetic SSMSpine archives: the release's exact container format with plausible content.

Why: the real release (about 25 GB, password-protected) is not available where the converter is
developed and tested, yet the converter must be exercised on input that looks like it in every
respect that can break it: zip layout (``Train/p<patient>/aug<shape>.pt``, macOS junk members,
deflated or stored members), ``torch.save`` pickles of dicts of numpy arrays written by numpy 1.x
(which name ``numpy.core.multiarray._reconstruct``, a module numpy 2 renamed), various dtypes,
and image/mask/landmark content that compresses and looks like a mid-sagittal T2-weighted lumbar
MRI, so that sizes, timings and previews are meaningful.

Content model, mirroring how the release was made (a statistical shape model applied to patient
textures): the *geometry* (vertebrae, discs, landmarks, masks) is a function of ``(seed, shape)``
and only mildly of ``patient``; the *texture* (tissue intensities, marrow and bowel texture, bias
field, noise level, disc degeneration) is a function of ``(seed, patient)``. Every sample is
bit-identical for the same ``(patient, shape, seed)``. Image x is the column (anterior on the
left, posterior on the right) and y the row (cranial at the top); landmark coordinates are
pixel coordinates in that convention, with pixel centres at integer coordinates.

Modules, each importing only those before it: ``config`` (what to generate, shared sizes) ←
``anatomy`` (the geometry) ← ``texture`` (the patient's appearance) ← ``paint`` (class and label
maps) ← ``sample`` (image formation, :func:`make_sample`) ← ``archive`` (dtypes, pickles, zips).
"""

from pipeline.tools.synth.archive import (
    MEMBER_DATE_TIME,
    cast_sample,
    iter_members,
    member_name,
    pt_bytes,
    write_archive,
    write_tree,
)
from pipeline.tools.synth.config import BONE_POINTS, DISC_POINTS, DISC_POINTS_IN_SHAPE, SIZE, SynthConfig
from pipeline.tools.synth.sample import EQUALIZED_LEVELS, SCANNER_LEVELS, equalize_hist, make_sample

__all__ = [
    "BONE_POINTS",
    "DISC_POINTS",
    "DISC_POINTS_IN_SHAPE",
    "EQUALIZED_LEVELS",
    "MEMBER_DATE_TIME",
    "SCANNER_LEVELS",
    "SIZE",
    "SynthConfig",
    "cast_sample",
    "equalize_hist",
    "iter_members",
    "make_sample",
    "member_name",
    "pt_bytes",
    "write_archive",
    "write_tree",
]
