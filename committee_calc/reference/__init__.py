"""Reference (e.g. DFT) calculations: YAML spec, fresh instance per call, timeout, failure capture.

```yaml
# reference.yaml
calculator: gpaw.GPAW                       # import path of any ASE calculator
parameters:                                 # passed to the constructor; "{workdir}" in a string
  mode: {name: pw, ecut: 400}               # is replaced by the per-call working directory
  xc: PBE
  kpts: {density: 3.0, gamma: true}
  txt: "{workdir}/gpaw.txt"
dispersion: {calculator: dftd3.ase.DFTD3, parameters: {method: PBE, damping: d3bj}}  # optional
timeout_s: 3600          # optional wall-clock limit per call (implies isolation: process)
isolation: inline        # inline | process
workdir: null            # base folder of the per-call working directories (default: system tmp)
failed_dir: null         # where failed structures go (default: <label store folder>/failed)
keep_workdirs: false     # keep the working directory of successful calls
```

Execution strategy (:class:`Reference`)
    * **inline** (default without a timeout): each call builds a *fresh*
      calculator from the spec (an instance given directly is deep-copied,
      or ``reset()`` if it cannot be copied) on a private copy of the atoms,
      in its own working directory (``directory=`` for calculators that take
      one, ``{workdir}`` substitution for any string parameter).  The process
      working directory is never changed.
    * **process** (always used with ``timeout_s``): the job (atoms, spec or
      pickled calculator, properties) is pickled into the per-call working
      directory and run by ``python -m committee_calc.reference.runner <dir>``
      in a new session; on timeout the whole process group gets SIGTERM, then
      SIGKILL after 5 s (:mod:`committee_calc.reference.runner`).  The child sees the parent's ``sys.path``.  Threads
      are not used: a Python thread cannot be stopped, a process can.

A failure (exception, non-convergence error, timeout, crash of the child,
missing or non-finite energy/forces) raises
:class:`~committee_calc.errors.ReferenceCalculationError` after saving
``structure.extxyz`` (with ``failure_reason``), ``error.txt`` and the working
directory's files into a new folder under ``failed_dir``.  Nothing is ever
returned (so nothing can be labelled) from a failed call.
"""
from .calls import Reference, as_reference
from .spec import GPAW_DEFAULT, SPEC_KEYS, ReferenceSpec, default_reference, load_reference, reference_from_dict

__all__ = ["Reference", "as_reference", "ReferenceSpec", "load_reference", "reference_from_dict",
           "default_reference", "GPAW_DEFAULT", "SPEC_KEYS"]
