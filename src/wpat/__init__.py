"""wpat: adversarial training with weight perturbation (AWP, Wu et al. 2020; RWP, Yu et al. 2022)."""

__version__ = "0.1.0"
