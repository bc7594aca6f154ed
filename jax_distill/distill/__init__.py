"""Stage-2 data: teacher traces generated, graded, filtered, decontaminated and written (``jax-distill data distill``)."""
