"""Result keys: every key of the committee/gate result schema, defined once.

Modules read and write results through these constants, never through string
literals, so a key is renamed in one place.  Units are internal (eV, Å, eV/Å³);
shapes use M members and N atoms.  The full schema table is in
:mod:`committee_calc.uncertainty`.
"""
from __future__ import annotations

# --- committee means (standard ASE keys) ------------------------------------
ENERGY = "energy"                    #: () eV
FREE_ENERGY = "free_energy"          #: () eV
FORCES = "forces"                    #: (N,3) eV/Å
STRESS = "stress"                    #: (6,) eV/Å³, Voigt, ASE sign convention
ENERGIES = "energies"                #: (N,) eV per-atom energies
#: the quantities a reference or a member returns
PROPERTIES = (ENERGY, FREE_ENERGY, FORCES, STRESS)

# --- per-member values -----------------------------------------------------
ENERGY_MEMBERS = "energy_members"    #: (M,) eV
FORCES_MEMBERS = "forces_members"    #: (M,N,3) eV/Å
STRESS_MEMBERS = "stress_members"    #: (M,6) eV/Å³
ENERGIES_MEMBERS = "energies_members"  #: (M,N) eV

# --- spreads (calibrated sample std, ddof=1) --------------------------------
ENERGY_STD = "energy_std"                        #: () eV
ENERGY_STD_PER_ATOM = "energy_std_per_atom"      #: () eV/atom
ENERGY_STD_PER_MOLECULE = "energy_std_per_molecule"  #: () eV/molecule
FORCES_STD = "forces_std"                        #: (N,3) eV/Å
FORCES_STD_ATOM = "forces_std_atom"              #: (N,) eV/Å, ‖σ_F,i‖
FORCES_STD_MAX = "forces_std_max"                #: () eV/Å, max_i ‖σ_F,i‖
FORCES_STD_MEAN = "forces_std_mean"              #: () eV/Å, mean_i ‖σ_F,i‖
FORCE_UNCERTAINTY_RELATIVE = "force_uncertainty_relative"  #: () 1, Hessmann et al. U
STRESS_STD = "stress_std"                        #: (6,) eV/Å³
ENERGIES_STD = "energies_std"                    #: (N,) eV
N_NONFINITE = "n_nonfinite"                      #: () members with NaN/inf output
N_MOLECULES = "n_molecules"                      #: () molecules in the structure

# --- Δ-learning baseline ----------------------------------------------------
BASELINE_ENERGY = "baseline_energy"
BASELINE_FORCES = "baseline_forces"
BASELINE_STRESS = "baseline_stress"
CORRECTION_ENERGY = "correction_energy"  #: () eV, the committee's learned correction
DELTA_WEIGHT = "delta_weight"            #: () 1, damping weight of the correction

# --- uncertainty bias (committee_calc.bias: biased results keep the unbiased values) ---
ENERGY_UNBIASED = "energy_unbiased"  #: () eV, the committee (or gate) energy without bias
FORCES_UNBIASED = "forces_unbiased"  #: (N,3) eV/Å
STRESS_UNBIASED = "stress_unbiased"  #: (6,) eV/Å³
BIAS_ENERGY = "bias_energy"          #: () eV, B(σ²) of the HAL/UDD bias
BIAS_KEYS = (ENERGY_UNBIASED, FORCES_UNBIASED, STRESS_UNBIASED, BIAS_ENERGY)

# --- gate ---------------------------------------------------------------------
GATE_DECISION = "gate_decision"      #: "committee" | "reference"
GATE_REASON = "gate_reason"          #: str
GATE_MEASURES = "gate_measures"      #: {measure: value}, internal units
COMMITTEE = "committee"              #: decision value: the committee answered
REFERENCE = "reference"              #: decision value: the reference answered

#: every key the committee may put in its results besides the means
COMMITTEE_KEYS = (ENERGY_MEMBERS, FORCES_MEMBERS, STRESS_MEMBERS, ENERGIES_MEMBERS, ENERGY_STD,
                  ENERGY_STD_PER_ATOM, ENERGY_STD_PER_MOLECULE, N_MOLECULES, FORCES_STD,
                  FORCES_STD_ATOM, FORCES_STD_MAX, FORCES_STD_MEAN, FORCE_UNCERTAINTY_RELATIVE,
                  STRESS_STD, ENERGIES_STD, N_NONFINITE)

#: prefixes of ``info``/``arrays`` keys that hold values at one geometry: reference labels
#: (``REF_energy``...), baselines (``BASE_``), Δ targets (``DELTA_``) and committee predictions
#: (``committee_``).  Drivers that move atoms drop them from their inputs
#: (:func:`committee_calc.structures.drop_labels`), so no moved frame carries a stale label.
GEOMETRY_LABEL_PREFIXES = ("REF_", "BASE_", "DELTA_", "committee_")
