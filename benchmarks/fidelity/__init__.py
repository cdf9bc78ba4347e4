"""Fidelity: our package against the authors' releases, and outputs across a refactor."""
