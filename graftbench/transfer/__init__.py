"""Schedule transfer: distil a grafted run's implicit step size into a schedule for D alone.

A grafted run M#D steps each layer by ratio(t) · dD, ratio = ||dM||/||dD||: M imposes an
implicit step-size schedule on D's direction. With the source run's own schedule divided out,
c(t) = ratio(t) / schedule(t) (:mod:`~graftbench.transfer.fit`) is fitted per layer, static or
piecewise-linear in the fraction of training, and written as a versioned JSON
(:mod:`~graftbench.transfer.schedule_file`); D then trains alone with
lr_layer(t) = lr_D · schedule(t) · c_layer(t) (:mod:`~graftbench.transfer.apply`), without M's
optimizer state.

    transfer = from_run(run_dir, "piecewise")            # or read(path)
    groups, factors = param_groups(model.named_parameters(), transfer, schedule, total_steps)
    optimizer = Graft(groups, transfer.direction)        # or torch.optim.SGD(groups, ...)
    scheduler = make_scheduler(optimizer, factors)

From the command line: ``graftbench transfer RUN_DIR [--kind static|piecewise] [--out FILE]``
writes the file, and ``graftbench train magnitude=<D> schedule=transferred
schedule.source=FILE_OR_RUN_DIR`` trains D with it through the engine
(:mod:`~graftbench.transfer.transferred`: the run's identity holds the content hash, its run
directory a copy).
"""

from graftbench.transfer.apply import (
    LayerFactor,
    check_direction,
    check_layers,
    make_scheduler,
    param_groups,
)
from graftbench.transfer.fit import (
    DEFAULT_KNOTS,
    MIN_SCHEDULE_FACTOR,
    Corrections,
    Fit,
    Series,
    corrections,
    fit_piecewise,
    fit_static,
)
from graftbench.transfer.schedule_file import KINDS, Transfer, read, write
from graftbench.transfer.source import (
    Source,
    default_path,
    distil,
    from_run,
    load,
    read_source,
)

__all__ = [
    "DEFAULT_KNOTS",
    "KINDS",
    "MIN_SCHEDULE_FACTOR",
    "Corrections",
    "Fit",
    "LayerFactor",
    "Series",
    "Source",
    "Transfer",
    "check_direction",
    "check_layers",
    "corrections",
    "default_path",
    "distil",
    "fit_piecewise",
    "fit_static",
    "from_run",
    "load",
    "make_scheduler",
    "param_groups",
    "read",
    "read_source",
    "write",
]
