"""The layer map: which layer every module of ``committee_calc`` and ``drivers`` belongs to.

Plain data, read by ``tests/test_layers.py`` (which enforces it) and documented in the README's
"Layout" section.  A module may import only from its own layer or a lower one ("imports only
downward"); the test parses every import with :mod:`ast` (also those inside functions) and fails
on an upward import, an import cycle, a driver importing another driver, an import between two
sibling areas of :data:`SIBLING_AREAS`, or a module that no entry below maps to.

Keys of :data:`LAYERS` are dotted module names.  A key ending in ``.*`` maps the package and
everything below it (``committee_calc.members.*`` covers ``committee_calc.members`` and
``committee_calc.members.n2p2.reader``); any other key maps exactly that module
(``committee_calc`` is the package's ``__init__``).  A new module gets its line here.

Layers, lowest first (:data:`ORDER`):

==== ============ =========================================================================
0    base         errors, units, keys, imports, structures, io, fileio, _lock, progress,
                  molecules, descriptors, summary_md, layers: no project imports above layer 0
1    members      one adapter per MLIP framework
2    committee    committee calculator, statistics, calibration, configs, domain/trust, Δ-learning,
                  uncertainty bias (HAL/UDD), retraining, and the package ``__init__``
3    gate         measures table, label store, reference, labeller, gate
4a   analysis     selection, clustering, landscapes
4b   relax        gated relaxation and pools (may use analysis)
4c   science      mc, md, phonons, active, campaign: may use relax and analysis, never each other
5    cli          the one builder shared by the drivers
6    drivers      console commands; a driver never imports another driver
==== ============ =========================================================================
"""

#: layer names, lowest first; a module may import from its own layer or any earlier one
ORDER = ("0", "1", "2", "3", "4a", "4b", "4c", "5", "6")

#: what each layer is, for messages and docs
NAMES = {
    "0": "base helpers",
    "1": "members",
    "2": "committee",
    "3": "measures / labels / reference / gate",
    "4a": "analysis",
    "4b": "relax",
    "4c": "science (mc, md, phonons, active, campaign)",
    "5": "cli",
    "6": "drivers",
}

#: module (exact) or package (``.*``) -> layer
LAYERS = {
    # 0 base
    "committee_calc.errors": "0",
    "committee_calc.units": "0",
    "committee_calc.keys": "0",
    "committee_calc.imports": "0",
    "committee_calc.structures": "0",
    "committee_calc.io": "0",
    "committee_calc.fileio": "0",
    "committee_calc._lock": "0",
    "committee_calc.progress": "0",
    "committee_calc.molecules": "0",
    "committee_calc.plotting": "0",
    "committee_calc.summary_md": "0",
    "committee_calc.descriptors": "0",
    "committee_calc.layers": "0",
    # 1 members
    "committee_calc.members.*": "1",
    # 2 committee
    "committee_calc": "2",
    "committee_calc.committee": "2",
    "committee_calc.uncertainty": "2",
    "committee_calc.calibration": "2",
    "committee_calc.calibration_maps": "2",
    "committee_calc.calibration_offsets": "2",
    "committee_calc.calibration_metrics": "2",
    "committee_calc.calibration_report": "2",
    "committee_calc.config": "2",
    "committee_calc.domain": "2",
    "committee_calc.delta": "2",
    "committee_calc.bias": "2",
    "committee_calc.train.*": "2",
    # 3 measures, labels, reference, labeller, gate
    "committee_calc.measures": "3",
    "committee_calc.calibration_thresholds": "3",
    "committee_calc.calibration_run": "3",
    "committee_calc.labels": "3",
    "committee_calc.reference.*": "3",
    "committee_calc.labeller": "3",
    "committee_calc.gate": "3",
    "committee_calc.scale.*": "3",  # executors, tasks, shards, label replay (Dask lazily)
    "committee_calc.scale.pool": "4b",  # pool relaxation as tasks (uses relax)
    "committee_calc.scale.merge": "4b",  # merge of shard folders (uses relax)
    "committee_calc.scale.tasks": "0",  # keyed tasks with retries on any executor (no project imports)
    "committee_calc.scale.landscape": "2",  # RemoteCommittee: a committee whose predict runs as tasks
    # 4 science library
    "committee_calc.analysis.*": "4a",
    "committee_calc.relax.*": "4b",
    "committee_calc.mc.*": "4c",
    "committee_calc.md.*": "4c",
    "committee_calc.phonons.*": "4c",
    "committee_calc.active.*": "4c",
    "committee_calc.campaign.*": "4c",
    # 5 cli, 6 drivers
    "committee_calc.cli": "5",
    "committee_calc.cli_scale": "5",  # the executor of a driver run (re-exported by cli)
    "committee_calc.cli_edge": "5",  # SIGTERM as Ctrl-C, our warnings as one line (used by cli.run_cli)
    "drivers.*": "6",
}

#: groups of packages on one layer that must not import each other
SIBLING_AREAS = (
    ("committee_calc.mc", "committee_calc.md", "committee_calc.phonons", "committee_calc.active",
     "committee_calc.campaign"),
)

#: packages whose modules must not import each other (each driver stands alone)
ISOLATED_MODULES = ("drivers",)
