"""Harmonic phonons and the quasi-harmonic approximation through the gate.

Compute: :mod:`.settings` (PhononSettings), :mod:`.supercell` (phonopy object, supercell-size
check), :mod:`.forces` (displaced supercells through ``gate.evaluate_many``), :mod:`.harmonic`
(force constants → thermal properties), :mod:`.spectra` (bands, DOS), :mod:`.volumes` (scaled
or pressure volumes, relaxation, one volume point), :mod:`.qha` (phonopy's QHA per member and
on the mean potential).  File I/O: :mod:`.qha_io`.  Figures: :mod:`.plots`, :mod:`.qha_plots`.
One runner: :mod:`.qha_run` (the resumable volume loop and every output of ``committee-qha``).
"""
