"""Iterative attacks that stop on an image once the judge has it broken under every draw.

An iterative attack (PGD) is given `done`, a function of (adversarial images, their positions in the attacked
set) -> booleans: the images that need no more steps. The harness (robustness.py) asks its judge: an image is
done when no draw of the judge classifies it correctly both clean and attacked, so it is counted broken whatever
further steps would do. Every `CHECK_EVERY` steps (and before the first) the done images are frozen at their
current point and drop out of the batch; the others step on as before.

A frozen image is broken under every draw, and an image that is never frozen takes the steps it takes without
early stopping: on a deterministic path the same iterates, so the robust accuracy an attack reports can only fall;
on the EOT path the same steps under other draws of the noise, so it agrees within noise. The plain attack keeps
only its last iterate, which can step back across the boundary; early stopping keeps the broken point it found, as
AutoAttack's APGD keeps its best point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CHECK_EVERY = 4
"""Steps between two calls of `done`: a call costs about one forward pass of the remaining images, a third of a
PGD step, so checking every 4 steps costs at most 1/12 more and a broken image takes at most 3 steps too many."""

Done = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def iterate(adv: torch.Tensor, steps: int, step: Callable[[torch.Tensor, torch.Tensor | slice], torch.Tensor], done: Done | None) -> torch.Tensor:
    """`steps` times adv <- step(adv, rows) where rows index (within this call) the images still stepping; without
    `done` every image takes every step, rows being the whole batch as a slice (views, no copies). Returns the final
    images."""
    if done is None:
        for _ in range(steps):
            adv = step(adv, slice(None))
        return adv
    active = torch.arange(adv.shape[0], device=adv.device)
    for t in range(steps):
        if t % CHECK_EVERY == 0:
            finished = done(adv[active], active).to(adv.device)
            active = active[~finished]
            if active.numel() == 0:
                break
        adv[active] = step(adv[active], active)
    return adv
