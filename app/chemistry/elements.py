"""Element sets that are part of every trained model's contract."""

from __future__ import annotations

# The 86 elemental-fraction (EF) inputs, in the order of ElemNet/iBRNet (networks.md).
# Changing this order silently breaks every shipped model: it is versioned with the featurizer.
EF_ELEMENTS: tuple[str, ...] = tuple(
    """
    H Li Be B C N O F Na Mg Al Si P S Cl K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As
    Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm
    Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Ac Th Pa U Np Pu
    """.split()
)
assert len(EF_ELEMENTS) == 86

EF_ELEMENT_SET: frozenset[str] = frozenset(EF_ELEMENTS)
