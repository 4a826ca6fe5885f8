"""Predicted stability: energy above a reference convex hull, with a probability of being stable.

A composition is stable when its formation energy lies on or below the convex hull of its
competing phases. The hull is built from a reference of known DFT formation energies
(``reference.py``: the shipped Materials Project set, or IBRNET_HULL_REFERENCE) with pymatgen's
PhaseDiagram, once per chemical system (``hull.py``), and a model's predicted formation energy is
compared with it (``assess.py``). The reference and the model must share one set of DFT energies:
the shipped pair is the Materials Project model (``formation_energy_mp``) and MP's energies.
"""
