"""``normdyn import-curves``: the reference code's result files as a per-seed curves CSV."""

from __future__ import annotations

import sys

import click


@click.command("import-curves")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The CSV to write.")
@click.option(
    "--measure",
    "-m",
    default="model_norm",
    show_default=True,
    help="The series that plays lambda (model_norm, l1, fro, g_2_1, spectral, ...).",
)
def import_curves_cmd(files: tuple[str, ...], out: str, measure: str) -> None:
    """Convert deep_norm result FILES (np.save of a dict; P and seed from the names, e.g.
    CNN_MNIST_P375_seed0_WD0.0.npy) into the per-seed CSV that `normdyn fit --curves` reads.

    The files are pickles: they are read by an unpickler that admits numpy arrays, dicts, lists and
    numbers only, so no code in them runs. val_error (the test set, in percent) becomes test_error
    as a fraction. A bad file is reported and skipped; the exit code is 1 if any was.
    """
    from normdyn.analyzers.reference_results import read_reference_runs, write_curves_csv

    runs, errors = read_reference_runs(files)
    usable = []
    for run in runs:
        if measure in run.series:
            usable.append(run)
        else:
            have = ", ".join(k for k in run.series if k not in ("train_error", "val_error")) or "none"
            errors.append(f"{run.path}: no {measure!r} series (has: {have}); choose one with --measure")
    for line in errors:
        click.echo(f"error: {line}", err=True)
    if not usable:
        raise click.ClickException(f"no usable file among {len(files)}; nothing written")
    rows = write_curves_csv(out, usable, measure)
    Ps = sorted({r.P for r in usable})
    click.echo(
        f"{out}: {rows} rows from {len(usable)} run(s), P = {', '.join(map(str, Ps))}; "
        f"fit with: normdyn fit --curves {out}"
    )
    if errors:
        sys.exit(1)
