"""QHA volumes as tasks on Dask workers (``committee-qha --workers N | --scheduler | --cluster-config``).

::

    ready = volumes_on_workers(spec, gate, "committee.yaml", settings, scan, out, structures, pressures, keys)

Each missing volume (relaxation, static energies, displaced supercells, phonons:
:func:`~committee_calc.phonons.volumes.run_volume_point`) is one task; a worker rebuilds the gate
from its recipe (:class:`~committee_calc.scale.recipe.GateRecipe`), labels into a private copy of
the label store, and returns the volume, its new labels and its domain/trust warnings.  As each
task finishes, the driver appends its labels (through ``Labeller.label``, de-duplicated) and hands
the volume to ``on_volume`` (:func:`~committee_calc.phonons.qha_run.compute_volumes` writes it
there at once, as in-process), so an interrupted run keeps every finished volume and a rerun loads
them.  A volume whose task failed
after its retries is computed in the driver (its error, if any, is then raised there).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import warnings

from ..scale.executors import open_executor
from ..scale.recipe import GateRecipe, domain_state, merge_domain, private_store
from ..scale.replay import append_records
from ..scale.tasks import map_tasks, task_key
from .qha_io import load_volume_point
from .volumes import run_volume_point

log = logging.getLogger("committee_calc.qha")


def volume_task(recipe: GateRecipe, structure, settings, kwargs: dict) -> tuple:
    """One volume in this process -> (VolumePoint, new label records, reference calls made, domain
    warnings (:func:`~committee_calc.scale.recipe.domain_state`))."""
    tmp = tempfile.mkdtemp(prefix="committee_qha_")
    try:
        store = private_store(recipe, tmp)
        gate = recipe.build_gate(store)
        with warnings.catch_warnings():  # the supercell size was checked once, in the driver
            warnings.filterwarnings("ignore", message=".*twice the committee cutoff")
            point = run_volume_point(structure, gate, settings, **kwargs)
        return point, (store.records if store is not None else []), gate.n_reference_calls, domain_state(gate)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def volumes_on_workers(spec, gate, committee_file, settings, scan, out, structures, pressures, keys,
                       on_volume=None) -> dict:
    """The volumes of ``structures`` not yet finished in ``out`` (their resume ``keys``), computed
    as tasks on the executor of ``spec`` -> {volume index: VolumePoint}; their labels are
    appended to ``gate``'s label store and its reference-call counter advanced, then
    ``on_volume(index, point)`` is called, as each task finishes (the driver writes the volume)."""
    recipe = GateRecipe.from_gate(gate, committee_file, gate.molecules)
    tasks, index = {}, {}
    for i, s in enumerate(structures):
        if load_volume_point(out, i, settings, keys[i]) is not None:
            continue
        kwargs = dict(relax=scan.relax, fmax_eVA=scan.fmax_eVA, steps=scan.relax_steps,
                      pressure_GPa=None if pressures is None else pressures[i], info={"volume_index": i},
                      static_from_reference=scan.static_from_reference)
        key = task_key(f"volume-{i:02d}", keys[i])
        tasks[key], index[key] = (recipe, s, settings, kwargs), i
    ready = {}
    if not tasks:
        return ready
    with open_executor(spec) as executor:
        for outcome in map_tasks(executor, volume_task, tasks, retries=spec.retries, desc="qha volume",
                                 progress=on_volume is None):
            if not outcome.ok:
                log.warning("volume %02d failed on the workers (%s); computing it here", index[outcome.key],
                            outcome.error)
                continue
            point, records, calls, domain = outcome.result
            append_records(gate.labeller, records)
            if gate.labeller is not None:
                gate.labeller.n_reference_calls += calls
            merge_domain(gate.committee, domain)
            ready[index[outcome.key]] = point
            if on_volume is not None:
                on_volume(index[outcome.key], point)
    return ready


__all__ = ["volume_task", "volumes_on_workers"]
